#!/usr/bin/env bash
# Screenshots of evaluation reports in headless Chromium, to look at them as a person would.
#
#   scripts/screenshot_report.sh OUT_DIR [REPORT.html ...]
#
# With no REPORT.html, renders the demo reports of scripts/report_demo.py into OUT_DIR first.
# Writes OUT_DIR/<folder>-<name>.png per report: 1400 px wide, the page down to its end (at most
# HEIGHT px, default 8000; the blank space under the page is cut).
# Needs Debian's chromium (apt-get install -y chromium); nothing is fetched from the network
# (background networking, component updates and sync are off; a fresh profile per run).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/screenshot_report.sh OUT_DIR [REPORT.html ...]}
shift
mkdir -p "$out"
py=${PYTHON:-python}
if [ $# -eq 0 ]; then
    mapfile -t reports < <(PYTHONPATH=$PWD "$py" scripts/report_demo.py "$out")
else
    reports=("$@")
fi
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "screenshot_report.sh: chromium not found (apt-get install -y chromium)" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
trim='
import sys
import numpy as np
from PIL import Image
path = sys.argv[1]
im = Image.open(path).convert("RGB")
rows = np.flatnonzero((np.asarray(im) < 250).any(axis=(1, 2)))
im.crop((0, 0, im.width, min(im.height, int(rows[-1]) + 24) if len(rows) else im.height)).save(path)
'
for html in "${reports[@]}"; do
    png="$out/$(basename "$(dirname "$html")")-$(basename "$html" .html).png"
    timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
        --disable-component-update --disable-sync --no-first-run --user-data-dir="$profile" \
        --hide-scrollbars --window-size=1400,"${HEIGHT:-8000}" --screenshot="$png" \
        "file://$(realpath "$html")" >/dev/null 2>&1
    "$py" -c "$trim" "$png"
    echo "$png"
done
