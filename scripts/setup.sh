#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine: ffmpeg (when missing), a Python 3.11 venv in
# .venv with radio installed editable (pins from requirements.txt), and lpips' linear weights.
# Idempotent: re-running it only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "[setup] installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.radio-installed
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  echo "[setup] installing radio and its pinned requirements (CPU torch)"
  .venv/bin/python -m pip install -q --upgrade pip wheel setuptools
  .venv/bin/python -m pip install -q -e '.[test]'
  # lpips ships the LPIPS v0.1 linear weights; its torchvision dependency is not needed
  # (eval/metrics/lpips.py runs the network itself) and PyPI's torchvision breaks beside CPU torch.
  .venv/bin/python -m pip install -q --no-deps lpips==0.1.4
  if ! .venv/bin/python -c "import cv2" >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libgl1 libglib2.0-0 >/dev/null
  fi
  touch "$stamp"
fi
echo "[setup] ok: $(.venv/bin/python -c 'import torch, apache_beam; print("torch", torch.__version__, "beam", apache_beam.__version__)')"
