"""Run under torchrun by tests/test_preempt.py: two optimiser steps of every model configuration (ablations
A-D, ViT(n, m), noise on/off, accumulation) through DDP on CPU (gloo), small widths at 64x64.

    torchrun --nproc_per_node 2 tests/ddp_configs.py

Prints "ok <overrides>" (rank 0) per configuration whose ranks stayed identical; any parameter without
a gradient makes DDP raise at the second step.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from radio.train import build, dist
from radio.train.config import load_train_config
from radio.train.trainer import train_step

SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "smoke-cpu.yaml")
BASE = ["run.batch=4", "loss.r1_every=1", "model.resolution=64", "model.disc_final=4", "model.vit.patch_div=8",
        "model.channels=[8,16,16,16,16,16]", "model.style_dim=16", "model.audio_dim=16", "model.vit.dim=16",
        "model.vit.heads=2", "model.audio.channels=[8,8,8,8]"]
CONFIGS = [
    ["model.ablation=A", "model.noise=true"],
    ["model.ablation=A", "model.noise=false"],
    ["model.ablation=B", "model.noise=false"],
    ["model.ablation=C", "model.vit.n=1", "model.vit.m=1", "model.noise=true"],
    ["model.ablation=C", "model.vit.n=2", "model.noise=false"],
    ["model.ablation=D", "model.vit.n=0", "model.vit.m=1", "model.noise=true"],
    ["model.ablation=D", "model.vit.n=1", "model.vit.m=1", "model.noise=false"],
    ["model.ablation=D", "model.vit.n=2", "model.vit.m=2", "model.noise=true"],
    ["model.ablation=D", "model.vit.n=3", "model.vit.m=1", "model.noise=false"],
    ["model.ablation=D", "model.noise=false", "run.accumulate=2"],
]


def batches(cfg, rank: int):
    """Endless random micro-batches, different per rank."""
    g = torch.Generator().manual_seed(rank)
    mb, r, t = cfg.run.batch // (2 * cfg.run.accumulate), cfg.model.resolution, cfg.data.frames
    while True:
        yield {"target": torch.randint(0, 256, (mb, t, 3, r, r), dtype=torch.uint8, generator=g),
               "reference": torch.randint(0, 256, (mb, t, 3, r, r), dtype=torch.uint8, generator=g),
               "mel": torch.randn(mb, t, 20, 80, generator=g)}


def main(selected: list[int]) -> None:
    device = torch.device("cpu")
    info = dist.init(device)
    logging.basicConfig(level=logging.INFO if info.main else logging.WARNING, format="%(name)s: %(message)s")
    torch.manual_seed(info.rank)
    for i in selected:
        cfg = load_train_config(SMOKE, BASE + CONFIGS[i])
        models, opts = build.build_radio(cfg, device, info)
        data = batches(cfg, info.rank)
        before = [p.detach().clone() for p in models.generator.parameters()]
        for step in range(2):
            train_step(models, opts, cfg, data, step, device, None)
        dist.assert_in_sync({"generator": models.generator, "ema": models.ema, "disc": models.disc}, device)
        moved = sum(not torch.equal(a, p) for a, p in zip(before, models.generator.parameters()))
        if moved != len(before):
            raise RuntimeError(f"{CONFIGS[i]}: {len(before) - moved} G tensors never changed (no gradient?)")
        if info.main:
            print("ok", " ".join(CONFIGS[i]), f"({moved}/{len(before)} G tensors changed)", flush=True)
    dist.shutdown()
    dist.leave(0)                   # as radio train's ranks end: a normal exit can abort in gloo's threads


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or list(range(len(CONFIGS))))
