"""Pipeline: recipes, the steps they run, the run cache and the model files.

Owns recipes (:mod:`~specfusion.pipeline.recipes`, keys and types in :mod:`~specfusion.pipeline.recipe_schema`),
the recipe runner (:mod:`~specfusion.pipeline.runner`), saved systems (:mod:`~specfusion.pipeline.systems`:
``model.sfm``, :func:`~specfusion.pipeline.systems.load_system`) and whole-folder outputs
(:mod:`~specfusion.pipeline.outputs`).
May import: every package below it (core, data, features, evaluation, models, distributed, fusion).
"""
