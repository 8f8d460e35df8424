"""Dubbing throughput: RADIO inference (192², T=1, eval mode) plus the per-frame CPU work of
``radio.dub`` (crop warp, lower-face mask, paste-back) at 512² and 1080p.

Random weights (timing only) and synthetic frames; needs torch, numpy, opencv, einops.

    PYTHONPATH=. python bench/gpu_dub.py                      # GPU: bf16, batch 1/16/64
    PYTHONPATH=. python bench/gpu_dub.py --device cpu --batches 1 4 --iters 2
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def model_fps(device: str, batch: int, iters: int, amp: bool, resolution: int) -> tuple[float, float]:
    from radio.model import RADIO, ModelConfig

    torch.manual_seed(0)
    model = RADIO(ModelConfig(resolution=resolution)).to(device).eval()
    x = torch.rand(batch, 3, resolution, resolution, device=device) * 2 - 1
    mel = torch.randn(batch, 20, 80, device=device)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if (amp and device == "cuda") else torch.autocast("cpu", enabled=False)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad(), ctx:
        for _ in range(2):
            model(x, x, mel)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x, x, mel)
        if device == "cuda":
            torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return batch * iters / dt, peak


def cpu_frame_ms(side_hw: tuple[int, int], n: int = 50) -> float:
    from preprocess import align
    from radio import dub

    h, w = side_hw
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    s = min(h, w) * 0.25  # a face a quarter of the short side
    base = np.array([w / 2, h / 2])
    lm = base + rng.normal(0, s / 3, (68, 2))
    lm[36:42] = base + [-s / 3, -s / 4]
    lm[42:48] = base + [s / 3, -s / 4]
    lm[48], lm[54] = base + [-s / 4, s / 2], base + [s / 4, s / 2]
    lm[1:16] = base + np.stack([np.linspace(-s, s, 15), np.abs(np.linspace(-1, 1, 15)) * -s + s], 1)
    affine = align.quad_to_affine(align.ffhq_quad(lm))
    crop_lm = align.apply_affine(affine, lm)
    t0 = time.perf_counter()
    for _ in range(n):
        crop = align.warp_face(frame, affine)
        mask = dub.lower_face_mask(crop_lm, 192, 0.04)
        dub.paste_back(frame, crop, mask, affine)
    return (time.perf_counter() - t0) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--resolution", type=int, default=192)
    ap.add_argument("--no-amp", action="store_true")
    a = ap.parse_args()
    print(f"torch {torch.__version__} device {a.device}"
          + (f" ({torch.cuda.get_device_name()})" if a.device == "cuda" else ""))
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    for b in a.batches:
        fps, peak = model_fps(a.device, b, a.iters, not a.no_amp, a.resolution)
        print(f"RADIO {a.resolution}² inference batch {b:3d} {'bf16' if a.device == 'cuda' and not a.no_amp else 'fp32'}: "
              f"{fps:8.1f} frames/s  peak {peak:.2f} GiB")
    torch.set_num_threads(1)
    for hw in ((512, 512), (1080, 1920)):
        ms = cpu_frame_ms(hw)
        print(f"CPU per frame (warp + mask + paste-back, 1 thread) {hw[1]}x{hw[0]}: {ms:.2f} ms "
              f"= {1000 / ms:.0f} frames/s/core")


if __name__ == "__main__":
    main()
