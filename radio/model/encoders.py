"""Content encoder E_c and style encoder E_s (paper §3.1, appendix A).

Layer i of both (channels from ``ModelConfig.channels``, sides at resolution 192 / 96):
  1  conv block 3x3                64 ch   192 / 96
  2  residual down-block          128 ch    96 / 48
  3  residual down-block          256 ch    48 / 24
  4  residual down-block          512 ch    24 / 12
  5  residual down-block          512 ch    12 / 6
  6  conv block 3x3  (E_c only)   512 ch    12 / 6     -> f_c
E_s replaces layer 6 with global average pooling + FC on layer 5's output -> f_s in R^512
(appendix A: "after four residual-down blocks"); a 6th conv block in E_s would feed nothing,
and unused parameters break DDP, so it is not built.

Inputs are float RGB in [-1, 1]; E_c's input is the target with its lower half masked (zeros).
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import ConvLayer, EqualLinear, ResDownBlock


def mask_lower_half(x: torch.Tensor) -> torch.Tensor:
    """Zero (mid-grey in [-1, 1]) rows H/2: of (..., H, W) images; idempotent."""
    h = x.shape[-2]
    return torch.cat([x[..., : h // 2, :], torch.zeros_like(x[..., h // 2:, :])], dim=-2)


def _layers(in_channels: int, channels: tuple[int, ...], n: int) -> nn.ModuleList:
    """Layers 1..n of the shared stack: conv block, four residual down-blocks, conv block."""
    layers = [ConvLayer(in_channels, channels[0], 3)]
    for i in range(1, min(n, 5)):
        layers.append(ResDownBlock(channels[i - 1], channels[i]))
    if n == 6:
        layers.append(ConvLayer(channels[4], channels[5], 3))
    return nn.ModuleList(layers)


class ContentEncoder(nn.Module):
    """E_c: (B, in_channels, R, R) -> [f_c^1, ..., f_c^6]; f_c^6 = f_c is (B, 512, R/16, R/16)."""

    def __init__(self, *, channels: tuple[int, ...] = (64, 128, 256, 512, 512, 512), in_channels: int = 3):
        super().__init__()
        if len(channels) != 6:
            raise ValueError(f"E_c has 6 layers; channels must have 6 entries. Got {channels}.")
        self.layers = _layers(in_channels, channels, 6)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


class StyleEncoder(nn.Module):
    """E_s: reference (B, 3, R, R) in [-1, 1] -> (f_s (B, style_dim), [f_s^1, ..., f_s^5])."""

    def __init__(self, *, channels: tuple[int, ...] = (64, 128, 256, 512, 512, 512), style_dim: int = 512):
        super().__init__()
        self.layers = _layers(3, channels, 5)
        self.fc = EqualLinear(channels[4], style_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return self.fc(x.mean(dim=(2, 3))), feats
