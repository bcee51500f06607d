"""Evaluation: the predictions-file format, metrics, coverage, plots and reports.

Owns :mod:`~specfusion.evaluation.predictions` (the file every system and fusion writes),
:mod:`~specfusion.evaluation.metrics` (accuracy, macro F1, confusion matrices, evaluation files),
:mod:`~specfusion.evaluation.coverage` (items scored out of how many), :mod:`~specfusion.evaluation.plots`
(every figure), :mod:`~specfusion.evaluation.report` (results.json to report.md / report.html, the most frequent
confusions, the items' audio index) and :mod:`~specfusion.evaluation.report_html` (the HTML of the run's and
each system's page).
May import: the core, :mod:`specfusion.data` and :mod:`specfusion.features`.
"""
