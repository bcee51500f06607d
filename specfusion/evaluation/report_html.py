"""The HTML of the run report (``report.html``) and of every system's own page (``<system folder>/report.html``).

The pages work offline and from any folder: no external script, style or font; figures and audio files are
referenced, never embedded or copied (links relative to the page where possible,
:func:`specfusion.evaluation.report.audio_href`). The results table sorts by any column when its header is
clicked (a small inline script: numbers numerically, ``–`` last either way; a second click reverses), and each
system's name links to its page. What the pages show is computed in :mod:`specfusion.evaluation.report`.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from specfusion.evaluation.report import (
    CLIPS_PER_CONFUSION,
    METRIC_NAMES,
    SYSTEM_PAGE,
    WIDE_CONFUSION_CLASSES,
    _coverage_note,
    _fmt,
    _legend,
    audio_href,
    has_paper_numbers,
    score_name,
    system_confusions,
    system_folder,
    table_rows,
)

esc = html.escape

STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:3px 8px}td.n{text-align:right}tr.skipped{color:#888}tr.failed{color:#a00}"
    "img{max-width:100%}.figs{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}"
    "img.cm{width:min(100%,900px)}img.f1{width:min(100%,420px)}"
    ".wide{width:96vw;margin-left:calc(50% - 48vw);text-align:center}.wide img{max-width:100%}"
    "table.sortable th{cursor:pointer;user-select:none}table.sortable th[aria-sort=ascending]::after{content:' \u25b2'}"
    "table.sortable th[aria-sort=descending]::after{content:' \u25bc'}audio{height:2em;vertical-align:middle}"
    "table.confusions td{vertical-align:middle}"
)

#: Sorts every ``table.sortable`` by the column whose header is clicked (Enter or Space on a focused header too):
#: columns whose header has ``data-type=number`` numerically (the first number of a cell), others as text;
#: empty cells and ``–`` go last in both directions; ties keep their order. The header shows the direction in
#: ``aria-sort``.
SORT_SCRIPT = """(function () {
  function key(cell, numeric) {
    var text = cell.textContent.trim();
    if (text === '' || text === '\\u2013') return null;
    if (!numeric) return text.toLowerCase();
    var value = parseFloat(text);
    return isNaN(value) ? null : value;
  }
  function sortBy(table, th, col) {
    var numeric = th.getAttribute('data-type') === 'number';
    var ascending = th.getAttribute('aria-sort') !== 'ascending';
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col], numeric), y = key(b.cells[col], numeric);
      if (x === y) return 0;
      if (x === null) return 1;
      if (y === null) return -1;
      var order = numeric ? x - y : x.localeCompare(y);
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
  }
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.title = 'sort by this column';
      th.addEventListener('click', function () { sortBy(table, th, col); });
      th.addEventListener('keydown', function (event) {
        if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); sortBy(table, th, col); }
      });
    });
  });
})();"""


def _page(title: str, body: list[str], *, script: bool = False) -> str:
    """A whole page: ``body``'s lines under a head with ``title`` and the style, the sort script at the end."""
    parts = ["<!doctype html><html lang=en><head><meta charset='utf-8'>", f"<title>{esc(title)}</title>",
             f"<style>{STYLE}</style>", "</head><body>", *body]  # fmt: skip
    if script:
        parts.append(f"<script>{SORT_SCRIPT}</script>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _results_table(results: dict, *, paper: bool, metric: str) -> list[str]:
    """The results table (sortable; each system's name links to its page)."""
    header = [
        ("block", ""),
        ("system", ""),
        ("method", ""),
        (f"Devel {metric}", "number"),
        (f"Test {metric}", "number"),
    ]
    header += [("paper Devel", "number"), ("paper Test", "number")] if paper else []
    header += [("items (devel / test)", "number"), ("note", "")]
    rows = []
    for row in table_rows(results):
        devel = f"<b>{_fmt(row['devel'])}</b>" if row["devel_best"] else _fmt(row["devel"])
        test = f"<b>{_fmt(row['test'])}</b>" if row["test_best"] else _fmt(row["test"])
        status = "" if row["status"] == "ok" else f"{row['status']}: "
        cls = f' class="{row["status"]}"' if row["status"] != "ok" else ""
        name = esc(row["name"])
        if row["page"]:
            name = f"<a class=system href='{esc(_href(row['page']))}'>{name}</a>"
        cells = [f"<td>{esc(row['block'])}</td>", f"<td>{name}</td>", f"<td>{esc(row['method'])}</td>"]
        cells += [f"<td class=n>{devel}</td>", f"<td class=n>{test}</td>"]
        if paper:
            cells += [f"<td class=n>{_fmt(row['paper_devel'])}</td>", f"<td class=n>{_fmt(row['paper_test'])}</td>"]
        cells += [f"<td class=n>{esc(row['items'])}</td>", f"<td>{esc(status + row['note'])}</td>"]
        rows.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    head = "".join(f"<th{f' data-type={kind}' if kind else ''}>{esc(text)}</th>" for text, kind in header)
    return ["<table class=sortable id=results>", f"<thead><tr>{head}</tr></thead>", "<tbody>", *rows,
            "</tbody></table>"]  # fmt: skip


def _href(relative: str) -> str:
    """A link to a file of the run given relative to the page's folder, URL-quoted."""
    import urllib.parse

    return urllib.parse.quote(Path(relative).as_posix())


def render_run_page(results: dict, details: dict | None, confusions: list[dict], *, page_dir=None) -> str:
    """``report.html``: the sortable results table, items not scored, the best system's figures and per-class F1,
    and the most frequent confusions with their clips (audio linked relative to ``page_dir``).

    Parameters
    ----------
    results : dict
        ``results.json``.
    details : dict or None
        The best system's figures (:func:`specfusion.evaluation.report._best_system_details`).
    confusions : list of dict
        :func:`specfusion.evaluation.report.confusion_sections`.
    page_dir : path-like, optional
        The page's folder (the run folder); without it audio is linked by ``file://`` URL.
    """
    metric = METRIC_NAMES.get(results["metric"], results["metric"])
    paper = has_paper_numbers(results)
    title = results.get("title") or results["dataset"]
    parts = [
        f"<h1>{esc(title)}</h1>",
        f"<p>Dataset <code>{esc(results['dataset'])}</code>; metric {esc(metric)}. {esc(_legend(paper))} "
        "Click a column's header to sort by it; a system's name opens its own page.</p>",
        *_results_table(results, paper=paper, metric=metric),
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
            *_confusion_figure(details),
            f"<a href='{esc(details['f1_png'])}'><img class=f1 src='{esc(details['f1_png'])}' alt='per-class F1'></a>",
            "</div>",
            "<table><tr><th>class</th><th>F1 [%]</th></tr>",
            *(f"<tr><td>{esc(c)}</td><td class=n>{v:.1f}</td></tr>" for c, v in details["class_f1"].items()),
            "</table>",
        ]
    if confusions:
        parts += ["<section id=confusions>", "<h2>Most frequent confusions</h2>", f"<p>{esc(_confusions_legend())}</p>"]
        for section in confusions:
            parts += confusions_html(section, page_dir, heading="h3", link=True)
        parts.append("</section>")
    return _page(title, parts, script=True)


def _confusions_legend() -> str:
    return (f"True -> predicted class, how often, and the clips behind it (at most {CLIPS_PER_CONFUSION} per pair, "
            "the most confident mistakes first: the predicted class's score furthest above the true class's), "
            "with both scores; play a clip to hear it (the dataset's own file).")  # fmt: skip


def confusions_html(section: dict, page_dir, *, heading: str = "h2", link: bool = False) -> list[str]:
    """One system's confusions (:func:`specfusion.evaluation.report.system_confusions`) as a heading and a table:
    each clip with its scores and an ``<audio>`` player of its file, linked relative to ``page_dir``."""
    name = esc(section["system"])
    if link and section.get("folder"):
        name = f"<a class=system href='{esc(_href(section['folder'] + '/' + SYSTEM_PAGE))}'>{name}</a>"
    parts = [f"<{heading}>{name} ({esc(section['partition'])})</{heading}>"]
    if not section["pairs"]:
        return parts + ["<p>No confusions.</p>"]
    kind = esc(score_name(section["kind"]))
    parts += ["<table class=confusions><thead><tr><th>true</th><th>predicted</th><th>count</th><th>clip</th>"
              f"<th>audio</th><th>true's {kind}</th><th>predicted's {kind}</th></tr></thead><tbody>"]  # fmt: skip
    for pair in section["pairs"]:
        first = [esc(pair["true"]), esc(pair["predicted"]), str(pair["count"])]
        for j, clip in enumerate(pair["clips"]):
            pair_cells = first if j == 0 else ["", "", ""]
            player = (f"<audio controls preload=none src='{esc(_audio_href(clip['path'], page_dir))}'></audio>"
                      if clip["path"] else "(audio file not recorded)")  # fmt: skip
            cells = [f"<td>{pair_cells[0]}</td>", f"<td>{pair_cells[1]}</td>", f"<td class=n>{pair_cells[2]}</td>",
                     f"<td>{esc(clip['name'])}</td>", f"<td>{player}</td>",
                     f"<td class=n>{clip['true_score']:.3f}</td>", f"<td class=n>{clip['predicted_score']:.3f}</td>"]  # fmt: skip
            parts.append("<tr>" + "".join(cells) + "</tr>")
    return parts + ["</tbody></table>"]


def _audio_href(path, page_dir) -> str:
    return audio_href(path, page_dir) if page_dir is not None else Path(path).absolute().as_uri()


def _confusion_figure(details: dict) -> list[str]:
    """The confusion matrix's HTML: beside the F1 chart (at most 900 px wide) for a few classes; for
    :data:`~specfusion.evaluation.report.WIDE_CONFUSION_CLASSES` or more, as wide as the window (wider than the
    text column) on its own row, so that 50 class names stay readable. Either way a link to the full-size PNG."""
    link = f"<a href='{esc(details['png'])}'><img class=cm src='{esc(details['png'])}' alt='confusion matrix'></a>"
    if len(details.get("class_f1") or ()) >= WIDE_CONFUSION_CLASSES:
        return [f"<div class=wide>{link.replace('class=cm ', '')}</div>", "<div class=figs>"]
    return ["<div class=figs>", link]


# -- a system's own page ------------------------------------------------------------------------------------------
#: The figures a step writes into its folder (``specfusion.evaluation.metrics.write_evaluation``), per partition.
PARTITION_FIGURES = (("test", "test"), ("devel", "development (out-of-fold)"))
LEARNING_CURVE = "learning_curve.png"


def render_system_page(results: dict, system: dict, section: dict | None, *, folder: Path, run_dir: Path) -> str:
    """A system's page: its row of the results (scores, method, members, note), its confusion matrices and
    per-class F1 charts, its learning curve where there is one, and its most frequent confusions with audio.

    Parameters
    ----------
    results : dict
    system : dict
        Its entry of ``results.json``.
    section : dict or None
        Its confusions (:func:`specfusion.evaluation.report.system_confusions`).
    folder, run_dir : Path
        The system's folder (the page's) and the run folder.
    """
    metric = METRIC_NAMES.get(results["metric"], results["metric"])
    row = next(r for r in table_rows(results) if r["name"] == system["name"])
    up = Path(os.path.relpath(run_dir, folder)).as_posix()
    parts = [f"<p><a class=up href='{esc(_href(up + '/report.html'))}'>&larr; run report</a></p>",
             f"<h1>{esc(system['name'])}</h1>", "<table>",
             *(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in _system_facts(row, system, results, metric, up)),
             "</table>"]  # fmt: skip
    for partition, label in PARTITION_FIGURES:
        matrix, f1 = f"confusion_{partition}.png", f"class_f1_{partition}.png"
        if (folder / matrix).is_file():
            parts += [f"<h2>{esc(label.capitalize())}</h2>", "<div class=figs>",
                      f"<a href='{matrix}'><img class=cm src='{matrix}' alt='confusion matrix, {esc(label)}'></a>",
                      *([f"<a href='{f1}'><img class=f1 src='{f1}' alt='per-class F1, {esc(label)}'></a>"]
                        if (folder / f1).is_file() else []), "</div>"]  # fmt: skip
    if (folder / LEARNING_CURVE).is_file():
        parts += [
            "<h2>Learning curve</h2>",
            f"<a href='{LEARNING_CURVE}'><img src='{LEARNING_CURVE}' alt='learning curve'></a>",
        ]
    if section is not None:
        parts += ["<h2>Most frequent confusions</h2>", f"<p>{esc(_confusions_legend())}</p>"]
        parts += confusions_html(section, folder, heading="h3")
    return _page(f"{system['name']} — {results.get('title') or results['dataset']}", parts)


def _system_facts(row: dict, system: dict, results: dict, metric: str, up: str) -> list[tuple[str, str]]:
    """(label, HTML) rows of a system page's table: kind, method, members (linked to their pages), scores, note."""
    facts = [("kind", esc(system["kind"]))]
    if row["method"]:
        facts.append(("method", esc(row["method"])))
    pages = {r["name"]: r["page"] for r in table_rows(results)}
    members = []
    for member in system.get("members") or ():
        page = pages.get(member)
        members.append(
            f"<a class=system href='{esc(_href(up + '/' + page))}'>{esc(member)}</a>" if page else esc(member)
        )
    if members:
        facts.append(("members", ", ".join(members)))
    facts += [(f"Devel {metric}", _fmt(row["devel"])), (f"Test {metric}", _fmt(row["test"])),
              ("items (devel / test)", esc(row["items"]))]  # fmt: skip
    if row["note"]:
        facts.append(("note", esc(row["note"])))
    return facts


def write_system_pages(run_dir, results: dict, audio: dict) -> list[Path]:
    """Write ``report.html`` into the folder of every system and fusion with predictions; returns the pages.

    Parameters
    ----------
    run_dir : path-like
    results : dict
        ``results.json``.
    audio : dict
        Item name -> audio file (:func:`specfusion.evaluation.report.read_audio_index`).
    """
    run_dir = Path(run_dir)
    pages = []
    for system in results["systems"]:
        relative = system_folder(system)
        if relative is None or system.get("status", "ok") != "ok" or not (run_dir / relative).is_dir():
            continue
        folder = run_dir / relative
        section = system_confusions(run_dir, system, audio)
        page = folder / SYSTEM_PAGE
        page.write_text(render_system_page(results, system, section, folder=folder, run_dir=run_dir), encoding="utf-8")
        pages.append(page)
    return pages
