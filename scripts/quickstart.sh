#!/usr/bin/env bash
# Set up (when needed) and run `radio preprocess` on the sample clips bundled in tests/data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-out/sample-dataset}
.venv/bin/radio preprocess --input 'tests/data/*.mp4' --output "$out"
echo
echo "Dataset written to: $(cd "$out" && pwd)"
echo "Look at it:        .venv/bin/radio inspect $out --output $out/contact_sheet.png"
