#!/usr/bin/env bash
# The one script run on a lent GPU machine (see bench/README.md): training step time at 192²/96²
# (batch 16, bf16), dubbing throughput (model + paste-back) and dubbing end to end. Writes the log to $OUT/device.log when $OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
log=${OUT:-/tmp}/device.log
start=$SECONDS
stamp() { echo "== [t+$((SECONDS - start)) s] $*"; }
{
  # the issue-14 figures first, each part under its own limit, so a slow part still leaves a log
  # (budget: ~7 min in all, inside a 10-minute call)
  stamp "training steps (ladder)"; timeout 330 bash bench/gpu_train.sh
  stamp "dubbing throughput"; timeout 60 python3 bench/gpu_dub.py
  stamp "dubbing end to end, 512² and 1080p (bench/dub.py)"
  timeout 60 python3 bench/dub.py --seconds 10 --batch 64
  timeout 60 python3 bench/dub.py --seconds 4 --batch 64 --size 1920x1080
  stamp "done"
} 2>&1 | tee "$log"
