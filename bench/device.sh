#!/usr/bin/env bash
# The one script run on a lent GPU machine (see bench/README.md): training step time at 192²/96²
# (batch 16, bf16) and dubbing throughput. Writes the log to $OUT/device.log when $OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
log=${OUT:-/tmp}/device.log
{
  echo "== dubbing throughput"; python3 bench/gpu_dub.py
  echo "== training steps"; bash bench/gpu_train.sh
} 2>&1 | tee "$log"
