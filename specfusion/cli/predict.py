"""``specfusion predict MODEL AUDIO... [--csv OUT]``: apply a saved system (``model.sfm``) to audio files.

    specfusion predict runs/esc50/systems/densenet121-imagenet/model.sfm my_clips/ --csv predicted/clips.csv

AUDIO are files, folders (searched recursively for .wav, .flac and .ogg files) or CSV files with a
``path`` column (relative paths are relative to the CSV's folder). Prints one line per file (file,
predicted class, its score); ``--csv`` writes ``file,predicted,score_<class>...`` (17 significant digits).
Files whose audio cannot be used are listed at the end and skipped; the exit code is 1 only when no file
could be predicted.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from pathlib import Path

from specfusion.cli._common import add_command, add_threads, check_device, check_output_file, finish_command
from specfusion.errors import ConfigError
from specfusion.files import write_atomic

log = logging.getLogger(__name__)

#: How many failed files the summary lists before abbreviating.
MAX_LISTED_FAILURES = 50

HELP = "apply a saved system (model.sfm) to audio files, folders or a CSV of paths"
DESCRIPTION = (
    "Load a model file written by `specfusion run` (systems/<name>/model.sfm, "
    "fusions/<name>/model.sfm), `specfusion svm` or `specfusion crnn` (DIR/model.sfm) and predict the class of "
    "every audio file. Unusable files are reported and skipped (exit code 1 only when nothing could be "
    "predicted). See docs/models.md."
)
EXAMPLE = """example:
  specfusion predict runs/esc50/systems/birdnet-v2-4-birds-sounds-cc-by-nc-sa/model.sfm my_recordings/ \\
      --csv runs/my_predictions.csv"""


def register(subparsers) -> None:
    parser = add_command(subparsers, "predict", HELP, DESCRIPTION, EXAMPLE)
    parser.add_argument("model", help="model file (model.sfm)")
    parser.add_argument("audio", nargs="+",
                        help="audio files, folders (searched recursively) or CSV files with a 'path' column")  # fmt: skip
    parser.add_argument("--csv", metavar="OUT", help="write file,predicted,score_<class>... to this CSV file")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda (default: a GPU when torch sees one)")
    add_threads(parser)
    finish_command(parser, run)


def audio_paths(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """(audio files in the order given, problems): files as they are, folders searched, CSVs read."""
    from specfusion.data.datasets._io import read_csv_rows
    from specfusion.data.datasets.custom import AUDIO_EXTENSIONS
    from specfusion.data.datasets.table import audio_files

    paths: list[Path] = []
    problems: list[str] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = audio_files(path, extensions=AUDIO_EXTENSIONS, problems=problems)  # x.wav and x.flac: both
            if not found:
                problems.append(f"{path}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder")
            paths.extend(found)
        elif path.suffix.lower() == ".csv" and path.is_file():
            for _, row in read_csv_rows(path, required=("path",)):
                if row["path"]:
                    rel = Path(row["path"])
                    paths.append(rel if rel.is_absolute() else path.parent / rel)
        else:
            paths.append(path)  # a missing or unreadable file is that item's failure
    return paths, problems


def format_table(paths, predicted, top) -> str:
    """One aligned line per file: file, predicted class, its score."""
    names = [str(p) for p in paths]
    width = max([len(n) for n in names] + [4])
    label_width = max([len(str(c)) for c in predicted] + [9])
    lines = [f"{'file':<{width}}  {'predicted':<{label_width}}  score"]
    lines += [f"{n:<{width}}  {str(c):<{label_width}}  {s:.4g}" for n, c, s in zip(names, predicted, top, strict=True)]
    return "\n".join(lines)


def write_csv(path, paths, predicted, scores, classes) -> Path:
    """``file,predicted,score_<class>...``; scores with 17 significant digits (exact float64 round trip)."""
    from specfusion.evaluation.predictions import SCORE_PREFIX

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "predicted", *[f"{SCORE_PREFIX}{c}" for c in classes]])
    for p, c, row in zip(paths, predicted, scores, strict=True):
        writer.writerow([str(p), c, *[format(float(v), ".17g") for v in row]])
    return write_atomic(path, buffer.getvalue())


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from specfusion.pipeline.systems import load_system

    if args.csv:
        check_output_file(args.csv, option="--csv")
    check_device(args.device)
    paths, problems = audio_paths(args.audio)
    for problem in problems:
        log.warning("%s", problem)
    if not paths:
        raise ConfigError("no audio files to predict: " + ("; ".join(problems) or "give files, folders or a CSV"))
    system = load_system(args.model, device=args.device)
    result = system.score(paths)
    done = [paths[i] for i in result.rows]
    classes = [str(c) for c in system.classes_]
    predicted = [classes[j] for j in np.argmax(result.scores, axis=1)] if len(done) else []
    top = result.scores.max(axis=1) if len(done) else []
    if done:
        print(format_table(done, predicted, top))
    if args.csv:
        write_csv(args.csv, done, predicted, result.scores, classes)
    kind = "probability" if system.kind == "proba" else "decision value"
    lines = [f"{len(done)} of {len(paths)} file(s) predicted by {system.name or args.model} (score: {kind})"
             + (f"; written to {args.csv}" if args.csv else "")]  # fmt: skip
    if result.failures:
        lines.append(f"{len(result.failures)} file(s) could not be used (skipped):")
        for i in sorted(result.failures)[:MAX_LISTED_FAILURES]:
            lines.append(f"  {paths[i]}: {result.failures[i]}")
        if len(result.failures) > MAX_LISTED_FAILURES:
            lines.append(f"  ... and {len(result.failures) - MAX_LISTED_FAILURES} more")
    print("\n".join(lines))
    if not done:
        print("specfusion: error: no file could be predicted", file=sys.stderr)
        return 1
    return 0
