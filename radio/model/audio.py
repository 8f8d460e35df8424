"""ResNetSE34L audio encoder (clovaai/voxceleb_trainer ``ResNetSE34L.py``), mel front end removed.

E_a = ``ResNetSE34L(norm="instance", act="lrelu")`` (InstanceNorm2d(affine) + LeakyReLU(0.2),
appendix A); S_a = ``ResNetSE34L()`` (BatchNorm + ReLU, unmodified). Input is the model-range
log-mel window (B, 20, 80) = (time, mel), i.e. ``clip(1.6*log10(mel) + 2.4, -4, 4)``; the net
sees it as (B, 1, 80 mel, 20 time) like the original. Shapes with the defaults:
conv1 stride (2, 1) -> (16, 40, 20); layers strides 1, 2, 2, 1 -> (128, 10, 5); mean over
frequency -> 5 time steps; self-attentive pooling -> 128; FC -> 512.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .layers import StridedPointwiseConv


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"norm must be 'batch' or 'instance'. Got {kind!r}.")


def _act(kind: str) -> nn.Module:
    if kind == "relu":
        return nn.ReLU()
    if kind == "lrelu":
        return nn.LeakyReLU(0.2)
    raise ValueError(f"act must be 'relu' or 'lrelu'. Got {kind!r}.")


class SELayer(nn.Module):
    """Squeeze-excitation: x * sigmoid(MLP(GAP(x))), reduction r."""

    def __init__(self, channels: int, *, reduction: int = 8, act: str = "relu"):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction), _act(act),
                                nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x):
        y = self.fc(x.mean(dim=(2, 3)))
        return x * rearrange(y, "b c -> b c 1 1")


class SEBasicBlock(nn.Module):
    """conv3x3(stride) -> act -> norm -> conv3x3 -> norm -> SE, + (projected) input, act.

    The act-before-norm order in the first conv is the original's.
    """

    def __init__(self, in_channels: int, channels: int, *, stride=1, reduction: int = 8,
                 norm: str = "batch", act: str = "relu"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(norm, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, channels)
        self.se = SELayer(channels, reduction=reduction, act=act)
        self.act = _act(act)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(StridedPointwiseConv(in_channels, channels, stride=stride),
                                            _norm(norm, channels))

    def forward(self, x):
        out = self.norm1(self.act(self.conv1(x)))
        out = self.se(self.norm2(self.conv2(out)))
        residual = x if self.downsample is None else self.downsample(x)
        return self.act(out + residual)


class SelfAttentivePooling(nn.Module):
    """SAP: weights softmax_t(u . tanh(W x_t + b)); (B, T, C) -> (B, C)."""

    def __init__(self, channels: int):
        super().__init__()
        self.linear = nn.Linear(channels, channels)
        self.attention = nn.Parameter(nn.init.xavier_normal_(torch.empty(channels, 1)))

    def forward(self, x):
        w = torch.tanh(self.linear(x)) @ self.attention          # (B, T, 1)
        return (x * F.softmax(w, dim=1)).sum(dim=1)


class ResNetSE34L(nn.Module):
    """Mel window (B, T=20, n_mels=80) in model range -> embedding (B, out_dim)."""

    def __init__(self, *, out_dim: int = 512, blocks=(3, 4, 6, 3), channels=(16, 32, 64, 128),
                 reduction: int = 8, norm: str = "batch", act: str = "relu", n_mels: int = 80,
                 input_norm: bool = False):
        super().__init__()
        if len(blocks) != 4 or len(channels) != 4:
            raise ValueError(f"ResNetSE34L has 4 stages. Got blocks={blocks}, channels={channels}.")
        if any(c % reduction for c in channels):
            raise ValueError(f"channels {channels} must be divisible by the SE reduction {reduction}.")
        self.n_mels = n_mels
        self.input_norm = nn.InstanceNorm1d(n_mels) if input_norm else None
        self.conv1 = nn.Conv2d(1, channels[0], 7, stride=(2, 1), padding=3, bias=False)
        self.norm1 = _norm(norm, channels[0])
        self.act = _act(act)
        stages, in_ch = [], channels[0]
        for n, ch, stride in zip(blocks, channels, (1, 2, 2, 1)):
            stage = [SEBasicBlock(in_ch, ch, stride=stride, reduction=reduction, norm=norm, act=act)]
            stage += [SEBasicBlock(ch, ch, reduction=reduction, norm=norm, act=act) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
            in_ch = ch
        self.stages = nn.Sequential(*stages)
        self.pool = SelfAttentivePooling(channels[-1])
        self.fc = nn.Linear(channels[-1], out_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        b, t, f = mel.shape
        if f != self.n_mels:
            raise ValueError(f"Expected mel windows (B, T, {self.n_mels}). Got {tuple(mel.shape)}.")
        x = rearrange(mel, "b t f -> b f t")
        if self.input_norm is not None:
            x = self.input_norm(x)
        x = self.act(self.norm1(self.conv1(x[:, None])))          # (B, C0, F/2, T)
        x = self.stages(x)                                          # (B, C3, F/8, T/4)
        x = rearrange(x.mean(dim=2), "b c t -> b t c")              # mean over frequency
        return self.fc(self.pool(x))
