#!/usr/bin/env bash
# The one script run on a lent GPU machine (see bench/README.md): training step time at 192²/96²
# (batch 16, bf16), dubbing throughput (model + paste-back) and dubbing end to end. Writes the log to $OUT/device.log when $OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
log=${OUT:-/tmp}/device.log
{
  echo "== dubbing throughput"; python3 bench/gpu_dub.py
  echo "== dubbing end to end, 512² and 1080p (bench/dub.py)"
  python3 bench/dub.py --seconds 20 --batch 64
  python3 bench/dub.py --seconds 8 --batch 64 --size 1920x1080
  echo "== training steps"; bash bench/gpu_train.sh
} 2>&1 | tee "$log"
