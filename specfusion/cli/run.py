"""``specfusion run RECIPE.toml --root DATA --out RUN_DIR``: the paper end to end, through the caches."""

from __future__ import annotations

import argparse

from specfusion.cli._common import add_command, add_threads, check_device, finish_command, progress_enabled

HELP = "run a recipe end to end (features, SVMs, CRNNs, fusions, report)"
DESCRIPTION = (
    "Run every base system and fusion of a recipe on a dataset and write results.json, "
    "report.md and report.html into RUN_DIR. Every step is cached: a second run does no work and a "
    "killed run resumes."
)
EXAMPLE = """example:
  specfusion run recipes/esc50-offline.toml --root ../shared/data/ESC-50 --out runs/esc50
  specfusion run recipes/esc50-offline.toml --root ../shared/data/ESC-50 --out runs/esc50 --only tag:audionet"""


def register(subparsers) -> None:
    parser = add_command(subparsers, "run", HELP, DESCRIPTION, EXAMPLE)
    parser.add_argument("recipe", help="recipe TOML file, e.g. recipes/esc50-offline.toml")
    parser.add_argument("--root", required=True, help="dataset root (for a csv dataset: the CSV file)")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--device", help="torch device (default: a GPU when torch sees one, else the CPU)")
    parser.add_argument(
        "--only", nargs="+", metavar="SELECTOR",
        help="run only these systems and fusions (names, fnmatch patterns or tag:TAG) and the members of "
        "those fusions; each step is cached as in the whole recipe, and the report lists these only",
    )  # fmt: skip
    add_threads(parser)
    finish_command(parser, run)


def run(args: argparse.Namespace) -> int:
    from specfusion.evaluation.report import read_results, render_markdown
    from specfusion.pipeline.recipes import load_recipe
    from specfusion.pipeline.runner import run_recipe

    check_device(args.device)
    recipe = load_recipe(args.recipe)
    if args.only:
        recipe = recipe.subset(args.only)
    summary = run_recipe(recipe, root=args.root, out_dir=args.out, progress=progress_enabled(args), device=args.device)
    if not getattr(args, "quiet", False):
        print(render_markdown(read_results(args.out), None))
        cached = len(summary.outcomes) - len(summary.executed)
        print(
            f"{len(summary.executed)} step(s) run, {cached} from cache; report: {summary.report_paths[0]} and {summary.report_paths[1]}"
        )
        from specfusion.pipeline.runner import TIMINGS_FILE, format_timings

        print(f"time per step (also in {TIMINGS_FILE}):\n{format_timings(summary.timings)}")
    failed = [o for o in summary.outcomes if o.status == "failed"]
    ok = [o for o in summary.outcomes if o.status == "ok"]
    return 1 if failed or not ok else 0
