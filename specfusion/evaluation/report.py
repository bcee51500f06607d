"""The run report: ``results.json`` and a Table-3-style ``report.md`` / ``report.html``, and one page per system.

Everything here is rendered from files on disk (``results.json``, the predictions files it points to and
``audio.csv``, the audio file of every item), so ``specfusion report RUN_DIR`` can re-render a finished or
partial run at any time.

Beside the results table the report lists, for the best system and for each fusion, the most frequent
confusions (true -> predicted class, count) on the partition the report uses (test when labelled, else the
out-of-fold development predictions), each with its clips: the true and the predicted class's scores and,
in the HTML pages, a player of the clip's audio file (linked where it lies, never copied; relative to the
page). Each system's row links to the system's own page (``<system folder>/report.html``: its confusion
matrices, per-class F1, learning curve where there is one, and its confusions). The HTML is rendered by
:mod:`specfusion.evaluation.report_html`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

from specfusion.errors import StoreError
from specfusion.evaluation.metrics import md
from specfusion.files import write_atomic

RESULTS_FILE = "results.json"
BEST_CONFUSION_PNG = "confusion_best.png"
BEST_CLASS_F1_PNG = "class_f1_best.png"
METRIC_NAMES = {"accuracy": "Acc [%]", "macro_f1": "F1 [%]"}
#: The audio file of every item of a run (``name,path``), written by the recipe runner; the report's players link to them.
AUDIO_INDEX = "audio.csv"
#: Each system's own page, in its folder beside its predictions.
SYSTEM_PAGE = "report.html"
#: How many (true, predicted) pairs the report lists per system, and how many clips per pair.
TOP_CONFUSIONS = 5
CLIPS_PER_CONFUSION = 8
#: From this many classes on, the confusion matrix is shown as wide as the window, above the F1 chart.
WIDE_CONFUSION_CLASSES = 20


def write_results(run_dir, *, dataset: str, metric: str, title: str, systems: list[dict[str, Any]]) -> Path:
    """Write ``RUN_DIR/results.json``.

    Each system is a dict with at least ``name``, ``kind`` ("base" | "fusion"), ``devel`` and ``test``
    (percent or None); the runner adds ``block``, ``status``, ``reason``, ``paper``, ``predictions``
    (path relative to the run folder), ``members`` and ``missing_members``.
    """
    path = Path(run_dir) / RESULTS_FILE
    data = {"dataset": dataset, "metric": metric, "title": title, "systems": systems}
    return write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_results(run_dir) -> dict[str, Any]:
    """Read ``RUN_DIR/results.json``; StoreError if there is none."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise StoreError(f"{path}: no results here (run the recipe with out={str(run_dir)!r} first)",
                         parameters={"run_recipe.out": run_dir})  # fmt: skip
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise StoreError(f"{path}: not valid JSON ({err})") from None


def _coverage_note(system: dict) -> str:
    coverage = system.get("coverage")
    if not coverage:
        return ""
    return f"scored {coverage['n_scored']} of {coverage['n_items']} items ({coverage['n_items'] - coverage['n_scored']} missing, listed below)"


def _items_text(counts: dict | None) -> str:
    """``"1600 / 400"``: labelled items scored in the development / test partition (``–`` where none)."""
    if not counts:
        return "–"
    return " / ".join(str(counts[p]) if counts.get(p) else "–" for p in ("devel", "test"))


def has_paper_numbers(results: dict) -> bool:
    """Whether any row carries the paper's numbers (a recipe of the paper), so its columns are shown."""
    return any((s.get("paper") or {}).get(k) is not None for s in results["systems"] for k in ("devel", "test"))


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def _best_in_blocks(systems: list[dict]) -> set[tuple[str, str]]:
    """(system name, column) pairs holding the best Devel / Test of their block (blocks of two or more rows)."""
    best = set()
    blocks: dict[str, list[dict]] = {}
    for s in systems:
        if s.get("status", "ok") == "ok":
            blocks.setdefault(s.get("block", ""), []).append(s)
    for members in blocks.values():
        if len(members) < 2:
            continue
        for column in ("devel", "test"):
            values = [s[column] for s in members if s.get(column) is not None]
            if values:
                top = max(values)
                best |= {(s["name"], column) for s in members if s.get(column) == top}
    return best


def best_system(results: dict) -> dict | None:
    """The system with the highest development score (never chosen by test results)."""
    ok = [s for s in results["systems"] if s.get("status", "ok") == "ok" and s.get("devel") is not None]
    return max(ok, key=lambda s: s["devel"]) if ok else None


def best_member(system: dict, results: dict) -> dict | None:
    """A fusion's member with the highest Devel (None for base systems or without member scores)."""
    by_name = {s["name"]: s for s in results["systems"]}
    members = [by_name[m] for m in system.get("members") or () if m in by_name and by_name[m].get("devel") is not None]
    return max(members, key=lambda m: m["devel"]) if members else None


def fusion_note(system: dict, results: dict) -> str:
    """A fusion's flag when it falls below its best member on Devel, and its members' weights."""
    parts = []
    top = best_member(system, results)
    if top is not None and system.get("devel") is not None and system["devel"] < top["devel"]:
        parts.append(f"BELOW ITS BEST MEMBER ({top['name']}, {_fmt(top['devel'])})")
    weights = system.get("weights") or {}
    if weights:
        order = [m for m in system.get("members") or () if m in weights] + [
            m for m in weights if m not in (system.get("members") or ())
        ]
        parts.append("weights: " + ", ".join(f"{name} {weights[name]:.2f}" for name in order))
    return "; ".join(parts)


def table_rows(results: dict) -> list[dict]:
    """Rows of the results table, grouped by block in the order blocks first appear.

    A fusion's row carries its ``method`` and, in its note, a flag when its Devel is below its best
    member's and each member's weight (where the method has weights); ``page`` is the system's own page
    relative to the run folder (None for a system without predictions).
    """
    order: list[str] = []
    for s in results["systems"]:
        if s.get("block", "") not in order:
            order.append(s.get("block", ""))
    best = _best_in_blocks(results["systems"])
    status = {s["name"]: s.get("status", "ok") for s in results["systems"]}
    rows = []
    for block in order:
        for s in results["systems"]:
            if s.get("block", "") != block:
                continue
            paper = s.get("paper") or {}
            note = s.get("reason", "") if s.get("status", "ok") != "ok" else ""
            if s.get("missing_members"):
                note = (
                    (note + "; " if note else "")
                    + "without "
                    + ", ".join(f"{m} ({status.get(m, 'skipped')})" for m in s["missing_members"])
                )
            if s["kind"] == "fusion" and s.get("status", "ok") == "ok":
                extra = fusion_note(s, results)
                note = "; ".join(p for p in (extra, note) if p)
            if _coverage_note(s):
                note = (note + "; " if note else "") + _coverage_note(s)
            rows.append(
                {
                    "block": block,
                    "name": s["name"],
                    "kind": s["kind"],
                    "method": s.get("method") or ("stacking-svm" if s["kind"] == "fusion" else ""),
                    "status": s.get("status", "ok"),
                    "devel": s.get("devel"),
                    "test": s.get("test"),
                    "devel_best": (s["name"], "devel") in best,
                    "test_best": (s["name"], "test") in best,
                    "paper_devel": paper.get("devel"),
                    "paper_test": paper.get("test"),
                    "items": _items_text(s.get("n_items")),
                    "note": note,
                    "page": f"{system_folder(s)}/{SYSTEM_PAGE}" if _has_page(s) else None,
                }
            )
    return rows


# -- the audio of the items, and the most frequent confusions ----------------------------------------------------
def write_audio_index(run_dir, items) -> Path:
    """Write ``RUN_DIR/audio.csv``: ``name,path`` of every item (a segment's channel items once), absolute paths;
    left as it is when it already says the same.

    Parameters
    ----------
    run_dir : path-like
    items : iterable of Item
        The run's dataset items (:class:`~specfusion.data.datasets.table.Item`: ``name`` as the predictions
        name it, ``path`` its audio file).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "path"])
    seen: set[str] = set()
    for item in items:
        if item.name not in seen:
            seen.add(item.name)
            writer.writerow([item.name, str(Path(item.path).absolute())])
    path = Path(run_dir) / AUDIO_INDEX
    text = buffer.getvalue()
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return path  # unchanged: a second run of a finished recipe rewrites no file of its steps
    return write_atomic(path, text)


def read_audio_index(run_dir) -> dict[str, Path]:
    """``name -> audio file`` from ``RUN_DIR/audio.csv``; empty for a run that did not record it."""
    path = Path(run_dir) / AUDIO_INDEX
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        return {row["name"]: Path(row["path"]) for row in csv.DictReader(f) if row.get("name") and row.get("path")}


def audio_href(path, page_dir) -> str:
    """The link to the audio file ``path`` from a page in ``page_dir``: relative (URL-quoted) where the two share a
    root, else a ``file://`` URL."""
    try:
        relative = os.path.relpath(Path(path).absolute(), Path(page_dir).absolute())
    except ValueError:  # another drive (Windows)
        return Path(path).absolute().as_uri()
    return urllib.parse.quote(Path(relative).as_posix())


def report_partition(predictions) -> tuple[Any, str]:
    """(the labelled items the report shows, its name): the test partition when labelled, else the out-of-fold
    development predictions."""
    test = predictions.test()
    test = test.subset(test.labels != "")
    if len(test):
        return test, "test"
    dev = predictions.dev()
    return dev.subset(dev.labels != ""), "devel (out-of-fold)"


def top_confusions(predictions, *, audio: dict[str, Path] | None = None, k: int = TOP_CONFUSIONS,
                   clips: int = CLIPS_PER_CONFUSION) -> list[dict]:  # fmt: skip
    """The ``k`` most frequent (true, predicted) pairs with true != predicted, and their clips.

    Parameters
    ----------
    predictions : Predictions
        Labelled items (e.g. :func:`report_partition`'s).
    audio : dict, optional
        Item name -> audio file (:func:`read_audio_index`); a channel item ``<segment>@ch<c>`` takes its segment's.
    k, clips : int
        Pairs listed, and clips listed per pair.

    Returns
    -------
    list of dict
        ``true``, ``predicted``, ``count`` and ``clips`` (at most ``clips``, the most confident mistakes first:
        highest predicted-class score minus true-class score), each ``name``, ``path`` (None when unknown),
        ``true_score``, ``predicted_score``. Pairs by count, ties in class order.
    """
    audio = audio or {}
    index = {c: j for j, c in enumerate(predictions.classes)}
    predicted = predictions.predicted()
    pairs: dict[tuple[str, str], list[int]] = {}
    for i, (label, guess) in enumerate(zip(predictions.labels, predicted)):
        if label and label != guess:
            pairs.setdefault((label, guess), []).append(i)
    ranked = sorted(pairs.items(), key=lambda kv: (-len(kv[1]), index[kv[0][0]], index[kv[0][1]]))[:k]
    out = []
    for (label, guess), rows in ranked:
        scores = predictions.scores[rows]
        true_scores, guess_scores = scores[:, index[label]], scores[:, index[guess]]
        order = sorted(
            range(len(rows)), key=lambda j: (-(guess_scores[j] - true_scores[j]), predictions.names[rows[j]])
        )
        listed = [
            {"name": str(predictions.names[rows[j]]), "path": _audio_of(str(predictions.names[rows[j]]), audio),
             "true_score": float(true_scores[j]), "predicted_score": float(guess_scores[j])}
            for j in order[:clips]
        ]  # fmt: skip
        out.append({"true": label, "predicted": guess, "count": len(rows), "clips": listed})
    return out


def _audio_of(name: str, audio: dict[str, Path]) -> Path | None:
    if name in audio:
        return audio[name]
    segment, sep, _ = name.rpartition("@ch")
    return audio.get(segment) if sep else None


def _has_page(system: dict) -> bool:
    """Whether a system gets its own page (:func:`specfusion.evaluation.report_html.write_system_pages`)."""
    return system.get("status", "ok") == "ok" and system_folder(system) is not None


def system_folder(system: dict) -> str | None:
    """A system's folder relative to the run folder (where its predictions and page are), None without predictions."""
    predictions = system.get("predictions")
    return Path(predictions).parent.as_posix() if predictions else None


def confusion_sections(run_dir, results: dict, audio: dict[str, Path]) -> list[dict]:
    """The confusions the run report lists: the best system's, then every fusion's (each with predictions).

    Each section: ``system``, ``folder`` (relative to the run), ``partition``, ``kind`` and ``pairs``
    (:func:`top_confusions`).
    """
    best = best_system(results)
    chosen = [best] if best is not None else []
    chosen += [s for s in results["systems"] if s["kind"] == "fusion" and s is not best]
    return [
        system_confusions(run_dir, s, audio) for s in chosen if s.get("status", "ok") == "ok" and s.get("predictions")
    ]


def system_confusions(run_dir, system: dict, audio: dict[str, Path]) -> dict:
    """One system's confusion section (:func:`confusion_sections`)."""
    from specfusion.evaluation.predictions import read_predictions

    predictions = read_predictions(Path(run_dir) / system["predictions"])
    subset, partition = report_partition(predictions)
    return {"system": system["name"], "folder": system_folder(system), "partition": partition, "kind": predictions.kind,
            "pairs": top_confusions(subset, audio=audio)}  # fmt: skip


def _best_system_details(run_dir: Path, results: dict) -> dict | None:
    """Confusion matrix PNG and per-class F1 of the best system (test partition if labelled, else devel)."""
    from specfusion.evaluation.metrics import class_f1
    from specfusion.evaluation.plots import plot_class_f1, plot_confusion_matrix
    from specfusion.evaluation.predictions import read_predictions

    best = best_system(results)
    if best is None or not best.get("predictions"):
        return None
    predictions = read_predictions(run_dir / best["predictions"])
    subset, partition = report_partition(predictions)
    value = best.get("test") if partition == "test" else best.get("devel")
    plot_confusion_matrix(
        subset.labels, subset.predicted(), classes=predictions.classes, path=run_dir / BEST_CONFUSION_PNG,
        title=f"{best['name']} — {partition}, {results['metric']} {value:.1f} %",
    )  # fmt: skip
    f1 = dict(
        zip(
            predictions.classes,
            100 * np.asarray(class_f1(subset.labels, subset.predicted(), classes=predictions.classes)),
        )
    )
    plot_class_f1(f1, path=run_dir / BEST_CLASS_F1_PNG, title=f"{best['name']} — {partition}, per-class F1")
    return {
        "system": best["name"],
        "partition": partition,
        "png": BEST_CONFUSION_PNG,
        "f1_png": BEST_CLASS_F1_PNG,
        "class_f1": f1,
    }


def _legend(paper: bool) -> str:
    """What the columns mean; the paper's table is named only when its numbers are shown."""
    text = ("Devel = 4-fold cross-validation on the development partition (out-of-fold predictions); Test = held-out "
            "test partition (– where the data has none). Bold = best of its block (blocks of two or more rows). "
            "Items = labelled items scored in each partition. Method = how a fusion combines its members (docs/fusion.md).")  # fmt: skip
    if paper:
        text += " Paper = Amiriparian et al. 2020, Table 3 (Table 1 for DCASE 2018 CRNNs)."
    return text


def render_markdown(results: dict, details: dict | None, confusions: list[dict] | None = None, *, page_dir=None) -> str:
    """The report as Markdown; ``confusions`` (:func:`confusion_sections`) with links relative to ``page_dir``
    (default: ``file://`` URLs)."""
    metric = METRIC_NAMES.get(results["metric"], results["metric"])
    paper = has_paper_numbers(results)
    lines = [
        f"# {md(results.get('title') or results['dataset'])}",
        "",
        f"Dataset: `{md(results['dataset'])}`; metric: {metric}. {_legend(paper)}",
        "",
        f"| block | system | method | Devel {metric} | Test {metric} | "
        + ("paper Devel | paper Test | " if paper else "")
        + "items (devel / test) | note |",
        "|---|---|---|---:|---:|" + ("---:|---:|" if paper else "") + "---:|---|",
    ]
    for row in table_rows(results):
        devel = f"**{_fmt(row['devel'])}**" if row["devel_best"] else _fmt(row["devel"])
        test = f"**{_fmt(row['test'])}**" if row["test_best"] else _fmt(row["test"])
        status = "" if row["status"] == "ok" else f"{row['status']}: "
        cells = [md(row["block"]), md(row["name"]), md(row["method"]), devel, test]
        cells += [_fmt(row["paper_devel"]), _fmt(row["paper_test"])] if paper else []
        cells += [row["items"], md(status + row["note"])]
        lines.append("| " + " | ".join(cells) + " |")
    incomplete = [s for s in results["systems"] if s.get("coverage")]
    if incomplete:
        lines += ["", "## Items not scored", ""]
        for s in incomplete:
            lines += [f"{md(s['name'])}: {_coverage_note(s).replace(', listed below', '')}:", ""]
            lines += [f"- {md(m['item'])}: {md(m['reason'])}" for m in s["coverage"]["missing"]] + [""]
    if details:
        lines += [
            "",
            f"## Best system: {md(details['system'])}",
            "",
            f"Confusion matrix and per-class F1 on the {details['partition']} predictions:",
            "",
            f"![confusion matrix]({details['png']}) ![per-class F1]({details['f1_png']})",
            "",
        ]
        lines += ["| class | F1 [%] |", "|---|---:|"]
        lines += [f"| {md(c)} | {v:.1f} |" for c, v in details["class_f1"].items()]
    lines += confusions_markdown(confusions or [], page_dir)
    return "\n".join(lines) + "\n"


def score_name(kind: str) -> str:
    """What a predictions kind's scores are, for a column header."""
    return "probability" if kind == "proba" else "decision value"


def confusions_markdown(sections: list[dict], page_dir) -> list[str]:
    """The confusions as Markdown: per system a table of pairs and their clips, each clip a link to its audio
    file (relative to ``page_dir``)."""
    if not sections:
        return []
    lines = ["", "## Most frequent confusions", "",
             f"True -> predicted class, how often, and the clips behind it (at most {CLIPS_PER_CONFUSION} per pair, "
             "the most confident mistakes first) with the true and the predicted class's scores.", ""]  # fmt: skip
    for section in sections:
        lines += [f"### {md(section['system'])} ({section['partition']})", ""]
        if not section["pairs"]:
            lines += ["No confusions.", ""]
            continue
        kind = score_name(section["kind"])
        lines += [f"| true | predicted | count | clip | true's {kind} | predicted's {kind} |",
                  "|---|---|---:|---|---:|---:|"]  # fmt: skip
        for pair in section["pairs"]:
            first = [md(pair["true"]), md(pair["predicted"]), str(pair["count"])]
            for j, clip in enumerate(pair["clips"]):
                name = md(clip["name"])
                link = f"[{name}]({audio_href(clip['path'], page_dir)})" if clip["path"] else name
                cells = (first if j == 0 else ["", "", ""]) + [link, f"{clip['true_score']:.3f}",
                                                                f"{clip['predicted_score']:.3f}"]  # fmt: skip
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def render_html(results: dict, details: dict | None, confusions: list[dict] | None = None, *, page_dir=None) -> str:
    """The report as an HTML page (figures and audio referenced, not embedded); see
    :func:`specfusion.evaluation.report_html.render_run_page`."""
    from specfusion.evaluation.report_html import render_run_page

    return render_run_page(results, details, confusions or [], page_dir=page_dir)


def render_report(run_dir) -> tuple[Path, Path]:
    """(Re-)render ``report.md``, ``report.html``, the best system's confusion matrix and every system's page
    from disk."""
    from specfusion.evaluation.report_html import write_system_pages

    run_dir = Path(run_dir)
    results = read_results(run_dir)
    details = _best_system_details(run_dir, results)
    audio = read_audio_index(run_dir)
    sections = confusion_sections(run_dir, results, audio)
    md_path = run_dir / "report.md"
    page = run_dir / "report.html"
    write_system_pages(run_dir, results, audio)
    md_path.write_text(render_markdown(results, details, sections, page_dir=run_dir))
    page.write_text(render_html(results, details, sections, page_dir=run_dir))
    return md_path, page
