#!/usr/bin/env bash
# RADIO training step time on one GPU: the paper model (configs/paper-192.yaml) at 192x192, batch 16
# windows (each T=5 target frames + 5 references + 5 mel windows = 80 generated frames per step),
# bf16 autocast, 3 warmup + 10 timed steps, then the same at 96x96 (the ablation setting). Random
# weights (VGG19 and S included) and synthetic frames: no dataset, no weight files, no network.
# Prints it/s, s/step, frames/s and peak memory (torch.cuda.max_memory_allocated) for the plain
# step, then for each speed switch of TrainConfig.speed added in turn (--ladder; issue 14).
#
#   bash bench/gpu_train.sh                      # on the GPU machine, from anywhere
#   bash bench/gpu_train.sh --device cpu --steps 2   # CPU smoke: smoke-cpu widths, batch 1, 96x96
#   bash bench/gpu_train.sh --batch 32 --no-vgg      # any bench/train.py option overrides
#
# Needs python3 with torch (CUDA), einops, numpy, pyyaml, fsspec (all in the GPU image).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

cpu=0
for a in "$@"; do [[ "$a" == "cpu" || "$a" == "--device=cpu" ]] && cpu=1; done

if [[ $cpu == 1 ]]; then
  # wiring check only: narrow model, one window, 96x96
  exec "$PY" bench/train.py --config configs/smoke-cpu.yaml --resolution 96 --batch 1 --warmup 0 "$@"
fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" - <<'PY'
import torch, einops, yaml, fsspec, numpy
print(f"torch {torch.__version__} cuda {torch.version.cuda} available {torch.cuda.is_available()} "
      f"einops {einops.__version__} numpy {numpy.__version__}")
PY
# 192² (the goal's setting): every rung; 96²: up to the R1 lever (compiling again would cost minutes).
# About 4.5 min on an H200 in all (cold R1 kernels ~40 s per timed rung at 192², compile ~1-2 min).
status=0
"$PY" bench/train.py --device cuda --config configs/paper-192.yaml --resolution 192 --batch 16 --amp bf16 \
  --warmup 2 --steps 6 --ladder "$@" || status=$?
"$PY" bench/train.py --device cuda --config configs/paper-192.yaml --resolution 96 --batch 16 --amp bf16 \
  --warmup 2 --steps 6 --ladder --ladder-to "+r1 1 frame/window bf16" "$@" || status=$?
exit $status
