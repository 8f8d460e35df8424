#!/usr/bin/env bash
# Screenshots of evaluation reports in headless Chromium, to look at them as a person would.
#
#   scripts/screenshot_report.sh OUT_DIR [REPORT.html ...]
#
# With no REPORT.html, renders the demo reports of scripts/report_demo.py into OUT_DIR first.
# Writes OUT_DIR/<name>.png (1400 px wide, the page's full height up to 6000 px) per report.
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
for html in "${reports[@]}"; do
    name=$(basename "$(dirname "$html")")-$(basename "$html" .html)
    height=$("$py" - "$html" <<'EOF'
import re, sys
# rough page height: text lines + images (enough for the screenshot not to cut the page)
text = open(sys.argv[1], encoding="utf-8").read()
rows = text.count("<tr>") + text.count("<h2>") * 3 + text.count("<p") * 2
imgs = sum(int(h) for h in re.findall(r"height:(\d+)px", text)) + 420 * text.count("<img")
print(min(6000, max(900, 120 + 28 * rows + imgs)))
EOF
)
    timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
        --disable-component-update --disable-sync --no-first-run --user-data-dir="$profile" \
        --hide-scrollbars --window-size=1400,"$height" --screenshot="$out/$name.png" \
        "file://$(realpath "$html")" >/dev/null 2>&1
    echo "$out/$name.png"
done
