"""The run report: ``results.json`` and a Table-3-style ``report.md`` / ``report.html``.

Everything here is rendered from files on disk (``results.json`` and the predictions files it points
to), so ``specfusion report RUN_DIR`` can re-render a finished or partial run at any time.
"""

from __future__ import annotations

import html
import json
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
    member's and each member's weight (where the method has weights).
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
                }
            )
    return rows


def _best_system_details(run_dir: Path, results: dict) -> dict | None:
    """Confusion matrix PNG and per-class F1 of the best system (test partition if labelled, else devel)."""
    from specfusion.evaluation.metrics import class_f1
    from specfusion.evaluation.plots import plot_class_f1, plot_confusion_matrix
    from specfusion.evaluation.predictions import read_predictions

    best = best_system(results)
    if best is None or not best.get("predictions"):
        return None
    predictions = read_predictions(run_dir / best["predictions"])
    test = predictions.test()
    test = test.subset(test.labels != "")
    subset, partition = (test, "test") if len(test) else (predictions.dev(), "devel (out-of-fold)")
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


def render_markdown(results: dict, details: dict | None) -> str:
    """The report as Markdown."""
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
    return "\n".join(lines) + "\n"


def render_html(results: dict, details: dict | None) -> str:
    """The report as a self-contained HTML page (the PNG is referenced next to it)."""
    metric = METRIC_NAMES.get(results["metric"], results["metric"])
    esc = html.escape
    paper = has_paper_numbers(results)
    rows = []
    for row in table_rows(results):
        devel = f"<b>{_fmt(row['devel'])}</b>" if row["devel_best"] else _fmt(row["devel"])
        test = f"<b>{_fmt(row['test'])}</b>" if row["test_best"] else _fmt(row["test"])
        status = "" if row["status"] == "ok" else f"{row['status']}: "
        cls = f' class="{row["status"]}"' if row["status"] != "ok" else ""
        cells = [f"<td>{esc(row[k])}</td>" for k in ("block", "name", "method")]
        cells += [f"<td class=n>{devel}</td>", f"<td class=n>{test}</td>"]
        cells += (
            [f"<td class=n>{_fmt(row['paper_devel'])}</td>", f"<td class=n>{_fmt(row['paper_test'])}</td>"]
            if paper
            else []
        )
        cells += [f"<td class=n>{esc(row['items'])}</td>", f"<td>{esc(status + row['note'])}</td>"]
        rows.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    header = ["block", "system", "method", f"Devel {metric}", f"Test {metric}"] + (
        ["paper Devel", "paper Test"] if paper else []
    )
    header += ["items (devel / test)", "note"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(results.get('title') or results['dataset'])}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px}td.n{text-align:right}tr.skipped{color:#888}tr.failed{color:#a00}img{max-width:100%}"
        ".figs{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}img.cm{width:min(100%,900px)}img.f1{width:min(100%,420px)}"
        ".wide{width:96vw;margin-left:calc(50% - 48vw);text-align:center}.wide img{max-width:100%}</style>",
        "</head><body>",
        f"<h1>{esc(results.get('title') or results['dataset'])}</h1>",
        f"<p>Dataset <code>{esc(results['dataset'])}</code>; metric {esc(metric)}. {esc(_legend(paper))}</p>",
        "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>",
        *rows,
        "</table>",
    ]
    incomplete = [s for s in results["systems"] if s.get("coverage")]
    if incomplete:
        parts.append("<h2>Items not scored</h2>")
        for s in incomplete:
            parts.append(f"<p>{esc(s['name'])}: {esc(_coverage_note(s).replace(', listed below', ''))}:</p><ul>")
            parts += [f"<li>{esc(m['item'])}: {esc(m['reason'])}</li>" for m in s["coverage"]["missing"]]
            parts.append("</ul>")
    if details:
        parts += [
            f"<h2>Best system: {esc(details['system'])}</h2>",
            f"<p>Confusion matrix and per-class F1 on the {esc(details['partition'])} predictions "
            "(click an image for its full size).</p>",
            *_confusion_figure(details, esc),
            f"<a href='{esc(details['f1_png'])}'><img class=f1 src='{esc(details['f1_png'])}' alt='per-class F1'></a>",
            "</div>",
            "<table><tr><th>class</th><th>F1 [%]</th></tr>",
            *(f"<tr><td>{esc(c)}</td><td class=n>{v:.1f}</td></tr>" for c, v in details["class_f1"].items()),
            "</table>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


#: From this many classes on, the confusion matrix is shown as wide as the window, above the F1 chart.
WIDE_CONFUSION_CLASSES = 20


def _confusion_figure(details: dict, esc) -> list[str]:
    """The confusion matrix's HTML: beside the F1 chart (at most 900 px wide) for a few classes; for
    :data:`WIDE_CONFUSION_CLASSES` or more, as wide as the window (wider than the text column) on its own
    row, so that 50 class names stay readable. Either way a link to the full-size PNG."""
    link = f"<a href='{esc(details['png'])}'><img class=cm src='{esc(details['png'])}' alt='confusion matrix'></a>"
    if len(details.get("class_f1") or ()) >= WIDE_CONFUSION_CLASSES:
        return [f"<div class=wide>{link.replace('class=cm ', '')}</div>", "<div class=figs>"]
    return ["<div class=figs>", link]


def render_report(run_dir) -> tuple[Path, Path]:
    """(Re-)render ``report.md``, ``report.html`` and the best system's confusion matrix from disk."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    details = _best_system_details(run_dir, results)
    md = run_dir / "report.md"
    page = run_dir / "report.html"
    md.write_text(render_markdown(results, details))
    page.write_text(render_html(results, details))
    return md, page
