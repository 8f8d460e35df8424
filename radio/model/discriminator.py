"""D: StyleGAN2 residual discriminator, applied per frame (paper eq. 3).

At 192: 1x1 conv (64 ch) -> residual down-blocks 192 -> 96 -> 48 -> 24 -> 12 -> 6
(128, 256, 512, 512, 512 ch) -> minibatch stddev (group 4) -> 3x3 conv -> FC -> FC -> logit.
At 96 the same stack stops at 6x6 after four blocks (``ModelConfig.disc_final``).

The minibatch-stddev group is taken within each call, i.e. within one rank's micro-batch of frames.
Training builds D for that batch (``Discriminator(cfg, batch=N)``): the group is then fixed to the
largest divisor of N up to ``model.mbstd_group`` (``mbstd_group``) and a call whose batch it does
not divide is refused, instead of shrinking the group silently.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from .config import ModelConfig
from .layers import ConvLayer, EqualLinear, ResDownBlock


def mbstd_group(group: int, batch: int) -> int:
    """The largest divisor of ``batch`` that is <= ``group``."""
    g = max(1, min(group, batch))
    while batch % g:
        g -= 1
    return g


def minibatch_stddev(x: torch.Tensor, group: int = 4) -> torch.Tensor:
    """Append one channel: the mean std over groups of ``group`` samples. (B, C, H, W) -> (B, C+1, H, W).

    The group shrinks to the largest divisor of B that is <= ``group`` (any batch size works);
    samples n, n + B/g, n + 2B/g, ... form a group, as in StyleGAN2.
    """
    b, c, h, w = x.shape
    g = mbstd_group(group, b)
    y = rearrange(x, "(g m) c h w -> g m c h w", g=g)
    y = torch.sqrt(y.var(dim=0, unbiased=False) + 1e-8).mean(dim=(1, 2, 3))     # (M,)
    y = y.repeat(g).view(b, 1, 1, 1).expand(b, 1, h, w)
    return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """Frames (N, 3, R, R) in [-1, 1] -> logits (N, 1). ``batch``: the N of every call (training); the
    minibatch-stddev group is then fixed for it (``self.group``); None: any N, the group shrinks per call."""

    def __init__(self, cfg: ModelConfig | None = None, *, batch: int | None = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        c = cfg.channels
        n_down = int(math.log2(cfg.resolution // cfg.disc_final))
        ch = [c[min(i, 5)] for i in range(n_down + 1)]
        self.resolution, self.batch = cfg.resolution, batch
        self.group = cfg.mbstd_group if batch is None else mbstd_group(cfg.mbstd_group, batch)
        self.from_rgb = ConvLayer(3, ch[0], 1)
        self.blocks = nn.Sequential(*[ResDownBlock(ch[i], ch[i + 1]) for i in range(n_down)])
        self.final_conv = ConvLayer(ch[-1] + 1, ch[-1], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(ch[-1] * cfg.disc_final ** 2, ch[-1], activation=True), EqualLinear(ch[-1], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5:
            raise ValueError(f"D is per frame: fold T into the batch. Got {tuple(x.shape)}.")
        if self.batch is not None and x.shape[0] % self.group:
            raise ValueError(f"D was built for batches of {self.batch} frames (minibatch-stddev group "
                             f"{self.group}). Got {x.shape[0]}.")
        x = self.blocks(self.from_rgb(x))
        x = self.final_conv(minibatch_stddev(x, self.group))
        return self.final_linear(x.flatten(1))
