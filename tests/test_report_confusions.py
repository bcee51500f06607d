"""The report's confusions, audio links, sortable table and system pages, on predictions files written here (the
browser checks on a real run are in test_report_browser.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from specfusion.data.datasets.table import Item
from specfusion.evaluation.predictions import Predictions, write_predictions
from specfusion.evaluation.report import (
    AUDIO_INDEX,
    CLIPS_PER_CONFUSION,
    audio_href,
    read_audio_index,
    render_report,
    top_confusions,
    write_audio_index,
    write_results,
)

CLASSES = ["a", "b", "c"]


def _predictions(pairs: list[tuple[str, str]], *, partition: str = "test") -> Predictions:
    """One item per (true, predicted) pair; the predicted class scores 1 + i/100 (larger margins later), the
    true class 0.5 (when they differ), the others 0."""
    scores = np.zeros((len(pairs), len(CLASSES)))
    for i, (true, guess) in enumerate(pairs):
        scores[i, CLASSES.index(guess)] = 1 + i / 100
        if true != guess:
            scores[i, CLASSES.index(true)] = 0.5
    folds = [0 if partition == "test" else 1 + i % 4 for i in range(len(pairs))]
    return Predictions(names=[f"clip{i}" for i in range(len(pairs))], folds=folds, partitions=[partition] * len(pairs),
                       labels=[t for t, _ in pairs], scores=scores, classes=CLASSES, kind="decision")  # fmt: skip


def test_top_confusions_count_pairs_and_list_the_most_confident_mistakes_first():
    pairs = [("a", "b")] * 3 + [("b", "c")] * 3 + [("c", "a")] * 1 + [("a", "a")] * 5 + [("c", "b")] * 2
    found = top_confusions(_predictions(pairs), audio={"clip0": Path("/data/clip0.wav")}, k=3)
    # by count, ties in class order (a->b before b->c); correct items never counted
    assert [(p["true"], p["predicted"], p["count"]) for p in found] == [("a", "b", 3), ("b", "c", 3), ("c", "b", 2)]
    clips = found[0]["clips"]
    assert [c["name"] for c in clips] == ["clip2", "clip1", "clip0"]  # largest margin first
    assert clips[0]["true_score"] == 0.5 and clips[0]["predicted_score"] == pytest.approx(1.02)
    assert clips[2]["path"] == Path("/data/clip0.wav") and clips[0]["path"] is None  # unknown audio: no link


def test_clips_per_pair_are_capped_and_channel_items_find_their_segments_file():
    predictions = _predictions([("a", "b")] * (CLIPS_PER_CONFUSION + 3))
    predictions.names = np.asarray([f"seg{i}@ch0" for i in range(len(predictions))], dtype=object)
    last = f"seg{len(predictions) - 1}"  # the largest margin: listed first
    (pair,) = top_confusions(predictions, audio={last: Path("/d/last.wav")})
    assert pair["count"] == CLIPS_PER_CONFUSION + 3 and len(pair["clips"]) == CLIPS_PER_CONFUSION
    assert "seg0@ch0" not in [c["name"] for c in pair["clips"]]  # the smallest margins left out
    assert pair["clips"][0]["name"] == f"{last}@ch0" and pair["clips"][0]["path"] == Path("/d/last.wav")


def test_audio_links_are_relative_to_the_page_and_url_quoted(tmp_path):
    audio = tmp_path / "data" / "my clips" / "a#1.wav"
    assert audio_href(audio, tmp_path / "runs" / "r1") == "../../data/my%20clips/a%231.wav"
    assert audio_href(audio, tmp_path / "runs" / "r1" / "systems" / "x") == "../../../../data/my%20clips/a%231.wav"


def test_the_audio_index_keeps_one_row_per_segment(tmp_path):
    items = [Item(name="s1", path=Path("x/s1.wav"), label="a", fold=1, channel=c) for c in range(4)]
    items.append(Item(name="s2", path=Path("x/s2.wav"), label="b", fold=0, partition="test"))
    write_audio_index(tmp_path, items)
    assert (tmp_path / AUDIO_INDEX).read_text().count("\n") == 3  # header + 2 segments
    assert read_audio_index(tmp_path) == {"s1": Path("x/s1.wav").absolute(), "s2": Path("x/s2.wav").absolute()}
    assert read_audio_index(tmp_path / "elsewhere") == {}  # a run that did not record it


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as the runner leaves it: two systems and a fusion with predictions, one skipped system."""
    run = tmp_path / "run"
    audio = tmp_path / "audio"
    audio.mkdir()
    pairs = [("a", "b")] * 2 + [("b", "b"), ("c", "c"), ("c", "a")]
    systems = []
    for name, folder, kind, devel in [("S one", "systems/s-one", "base", 80.0), ("S two", "systems/s-two", "base", 60.0),
                                      ("Fused", "fusions/fused", "fusion", 70.0)]:  # fmt: skip
        write_predictions(run / folder / "predictions.csv", _predictions(pairs))
        systems.append({"name": name, "kind": kind, "block": kind, "status": "ok", "devel": devel, "test": devel - 5,
                        "predictions": f"{folder}/predictions.csv", "members": ["S one", "S two"] if kind == "fusion" else []})  # fmt: skip
    systems.append({"name": "Skipped", "kind": "base", "block": "base", "status": "skipped", "reason": "no weights",
                    "devel": None, "test": None, "predictions": None})  # fmt: skip
    write_results(run, dataset="toy", metric="accuracy", title="toy <run>", systems=systems)
    write_audio_index(run, [Item(name=f"clip{i}", path=audio / f"clip{i}.wav", label="a", fold=0) for i in range(5)])
    return run


def test_report_lists_confusions_with_players_and_links_every_system(run_dir):
    md, page = render_report(run_dir)
    text = page.read_text()
    # the best system (S one) and the fusion, not S two
    assert re.findall(r"<h3><a class=system href='([^']+)'>([^<]+)</a>", text) == [
        ("systems/s-one/report.html", "S one"),
        ("fusions/fused/report.html", "Fused"),
    ]
    assert text.count("<audio controls preload=none src='../audio/clip1.wav'>") == 2
    assert "<table class=sortable id=results>" in text and "<th data-type=number>Devel Acc [%]</th>" in text
    assert "<script>" in text and "http" not in text  # works offline: nothing fetched from elsewhere
    assert "toy &lt;run&gt;" in text  # user text escaped
    assert "<td><a class=system href='systems/s-two/report.html'>S two</a></td>" in text
    assert "<td>Skipped</td>" in text  # no page, no link
    report = md.read_text()
    assert (
        "## Most frequent confusions" in report
        and "| a | b | 2 | [clip1](../audio/clip1.wav) | 0.500 | 1.010 |" in report
    )


def test_every_system_with_predictions_gets_its_page(run_dir):
    render_report(run_dir)
    assert not (run_dir / "systems" / "skipped").exists()
    page = (run_dir / "systems" / "s-two" / "report.html").read_text()
    assert "<h1>S two</h1>" in page and "<a class=up href='../../report.html'>" in page
    assert "<audio controls preload=none src='../../../audio/clip1.wav'>" in page  # relative to its own folder
    fused = (run_dir / "fusions" / "fused" / "report.html").read_text()
    assert "<a class=system href='../../systems/s-one/report.html'>S one</a>" in fused  # members linked
    results = json.loads((run_dir / "results.json").read_text())
    assert [s["name"] for s in results["systems"]][-1] == "Skipped"


def test_a_run_without_its_audio_index_lists_the_clips_without_players(run_dir):
    (run_dir / AUDIO_INDEX).unlink()
    _, page = render_report(run_dir)
    text = page.read_text()
    assert "<audio" not in text and "(audio file not recorded)" in text and "<td>clip1</td>" in text


def test_class_and_item_names_from_users_files_are_escaped():
    from specfusion.evaluation.report import confusions_markdown
    from specfusion.evaluation.report_html import confusions_html

    evil = "<img src=x onerror=alert(1)>"
    predictions = Predictions(names=[f"{evil}|x"], folds=[0], partitions=["test"], labels=[evil],
                              scores=[[0.0, 1.0]], classes=[evil, "b"], kind="proba")  # fmt: skip
    section = {"system": evil, "folder": "systems/x", "partition": "test", "kind": "proba",
               "pairs": top_confusions(predictions, audio={f"{evil}|x": Path("/d/a b.wav")})}  # fmt: skip
    page = "\n".join(confusions_html(section, Path("/d"), link=True))
    text = "\n".join(confusions_markdown([section], Path("/d")))
    for rendered in (page, text):
        assert evil not in rendered and "&lt;img src=x onerror=alert(1)&gt;" in rendered
    assert "src='a%20b.wav'" in page and "](a%20b.wav)" in text and "\\|x" in text  # a pipe cannot split the row
