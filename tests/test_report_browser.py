"""report.html and the systems' pages in a real headless browser (Chromium driven by Playwright), on a small real run.

Checked: the pages load without console errors, every <audio> element points at an existing audio file (and the
browser reads the first ones), clicking a column header sorts the results table (numbers numerically, "–" last,
a second click reverses), and every system link opens that system's page.

Needs the Playwright package (``pip install playwright``, in the ``test`` extra) and a Chromium on the PATH
(``apt-get install chromium``; or set CHROME to a Chromium or Chrome binary); Playwright's own browser download is
never used. Without them the tests are skipped, unless SPECFUSION_REQUIRE_BROWSER=1 (CI sets it): then they fail.
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
from pathlib import Path

import pytest

from specfusion.pipeline.recipes import parse_recipe
from specfusion.pipeline.runner import run_recipe

CLASSES = ("dog", "rooster", "rain", "sea_waves")

RECIPE = """
title = "browser check: 4 ESC-50 classes"
[dataset]
kind = "csv"

[[systems]]
name = "Lite0 / ImageNet"
kind = "deepspectrum"
extractor = "efficientnet_lite0"
weights = "imagenet"
tags = ["ds"]

[[systems]]
name = "Lite0 / None"
kind = "deepspectrum"
extractor = "efficientnet_lite0"
weights = "none"
tags = ["ds"]

[[systems]]
name = "CRNN"
kind = "crnn"
variant = "esc50"
epochs = 1
filters = [4, 4, 8, 8]
gru_units = 8

[[fusions]]
name = "Lite0 weighted"
members = ["tag:ds"]
method = "weighted"
"""


def _browser_executable() -> str:
    """The Chromium to drive: $CHROME, else chromium / chromium-headless-shell / google-chrome on the PATH.

    Skips the test with the reason when Playwright or the browser is missing; fails instead when
    SPECFUSION_REQUIRE_BROWSER=1.
    """
    give_up = pytest.fail if os.environ.get("SPECFUSION_REQUIRE_BROWSER") == "1" else pytest.skip
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        give_up("Playwright is not installed (pip install playwright; the test extra has it)")
    candidates = [os.environ.get("CHROME")] + [
        shutil.which(n) for n in ("chromium", "chromium-headless-shell", "google-chrome")
    ]
    found = next((c for c in candidates if c and Path(c).is_file()), None)
    if found is None:
        give_up("no Chromium found (apt-get install chromium, or set CHROME to a Chromium/Chrome binary)")
    return found


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = _browser_executable()
    with sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def run_dir(browser, esc50_root, tmp_path_factory):
    """4 ESC-50 classes, folds 1-4 as development folds (128 clips, no test partition: the report shows the
    out-of-fold predictions, and the Test column is "–" throughout)."""
    from specfusion.data.datasets import load_esc50

    rows = ["path,label,fold,partition"]
    rows += [f"{i.path},{i.label},{i.fold},dev" for i in load_esc50(esc50_root) if i.label in CLASSES]
    folder = tmp_path_factory.mktemp("browser")
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    out = folder / "run"
    run_recipe(parse_recipe(RECIPE), root=folder / "data.csv", out_dir=out)
    return out


class Page:
    """A page opened in the browser, with the console errors and uncaught exceptions it produced."""

    def __init__(self, browser, path: Path):
        self.page = browser.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.goto(path.as_uri())
        self.page.wait_for_load_state("load")

    def column(self, index: int) -> list[str]:
        return self.page.eval_on_selector_all(
            "#results tbody tr", f"rows => rows.map(r => r.cells[{index}].textContent.trim())"
        )

    def audio_files(self) -> list[Path]:
        urls = self.page.eval_on_selector_all("audio", "els => els.map(e => e.src)")
        assert all(u.startswith("file://") for u in urls), urls
        return [Path(urllib.parse.unquote(urllib.parse.urlparse(u).path)) for u in urls]

    def audio_duration(self, index: int) -> float:
        """Load the ``index``-th player's file in the browser; its duration in seconds."""
        return self.page.evaluate(
            """async (i) => {
                const audio = document.querySelectorAll('audio')[i];
                audio.load();
                await new Promise((ok, fail) => {
                    audio.onloadedmetadata = ok;
                    audio.onerror = () => fail('media error ' + (audio.error && audio.error.code));
                    setTimeout(() => fail('timeout'), 10000);
                });
                return audio.duration;
            }""",
            index,
        )


def test_report_loads_without_console_errors_and_its_audio_exists(browser, run_dir):
    page = Page(browser, run_dir / "report.html")
    files = page.audio_files()
    # the best system's and the fusion's confusions, each clip with a player of the dataset's own file
    assert len(files) >= 2 and all(f.is_file() for f in files), files
    assert all(f.suffix == ".flac" and "ESC-50" in f.parts for f in files)
    assert not any(run_dir in f.parents for f in files)  # linked, never copied into the run
    srcs = page.page.eval_on_selector_all("audio", "els => els.map(e => e.getAttribute('src'))")
    assert all(s.startswith("../") for s in srcs)  # relative to the page
    assert page.audio_duration(0) == pytest.approx(5.0, abs=0.01)  # ESC-50 clips are 5 s
    assert page.page.locator("audio[preload=none]").count() == len(files)
    assert page.errors == []


def test_clicking_a_header_sorts_the_results_table(browser, run_dir):
    page = Page(browser, run_dir / "report.html")
    headers = page.page.locator("#results thead th")
    names = headers.all_inner_texts()
    devel, test, system = names.index("Devel Acc [%]"), names.index("Test Acc [%]"), names.index("system")
    before = page.column(system)
    headers.nth(devel).click()
    values = [float(v) for v in page.column(devel)]
    assert values == sorted(values) and len(values) == 4
    assert headers.nth(devel).get_attribute("aria-sort") == "ascending"
    headers.nth(devel).click()
    assert [float(v) for v in page.column(devel)] == sorted(values, reverse=True)
    assert headers.nth(devel).get_attribute("aria-sort") == "descending"
    # the rows move whole: each name keeps its score
    pairs = dict(zip(page.column(system), page.column(devel)))
    headers.nth(system).click()
    ordered = page.column(system)
    assert sorted(ordered) == sorted(before) and ordered == sorted(ordered, key=str.lower)
    assert dict(zip(ordered, page.column(devel))) == pairs
    headers.nth(test).click()  # every cell "–" (no test partition): nothing to order, nothing breaks
    assert page.column(test) == ["–"] * 4
    assert page.errors == []


def test_every_system_link_opens_its_page(browser, run_dir):
    page = Page(browser, run_dir / "report.html")
    links = page.page.eval_on_selector_all("#results a.system", "els => els.map(e => [e.textContent, e.href])")
    assert {name for name, _ in links} == {"Lite0 / ImageNet", "Lite0 / None", "CRNN", "Lite0 weighted"}
    for name, url in links:
        target = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
        assert target.is_file() and target.parent.parent.parent == run_dir, url
        system = Page(browser, target)
        assert system.page.locator("h1").inner_text() == name
        files = system.audio_files()
        assert files and all(f.is_file() for f in files)  # every system confuses some of 128 clips
        images = system.page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.naturalWidth])")
        assert images and all(width > 0 for _, width in images), images  # every figure found and decoded
        if name == "CRNN":
            assert "learning_curve.png" in [src for src, _ in images]
        back = system.page.locator("a.up")
        assert (
            Path(urllib.parse.unquote(urllib.parse.urlparse(back.evaluate("e => e.href")).path))
            == run_dir / "report.html"
        )
        assert system.errors == [], (name, system.errors)
    fusion = Page(browser, run_dir / "fusions" / "lite0-weighted" / "report.html")
    members = fusion.page.eval_on_selector_all("a.system", "els => els.map(e => e.textContent)")
    assert members == ["Lite0 / ImageNet", "Lite0 / None"]  # a fusion's page links to its members' pages
