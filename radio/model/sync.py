"""Sync discriminator S = (S_v, S_a) (paper §3.3 eq. 4-5, appendix A).

S_v: 5 grayscale frames stacked as channels, cut from the aligned frame's lower-face box
(rows 48:192, cols 24:168 of a 192 frame -> 144x144; the box scales with the frame, and a
crop that is not ``size`` pixels is resized to it, so one S serves both 192 and 96 models),
a ResNet with CBAM channel + spatial attention in every block, GAP, FC, ReLU -> 512.
S_a: unmodified ResNetSE34L (BatchNorm + ReLU) on the 20-row mel window that covers the 5
frames, then ReLU -> 512. Both embeddings are >= 0, so p = cos(v, a) is in [0, 1].
S is pretrained with ``sync_bce`` and frozen (``requires_grad_(False)``, ``eval()``) in RADIO
training; keep it in eval mode there, its BatchNorm statistics are part of the pretrained state.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .audio import ResNetSE34L
from .config import ModelConfig
from .layers import StridedPointwiseConv

GRAY = (0.299, 0.587, 0.114)


def to_sync_input(frames: torch.Tensor, *, box: tuple[int, ...] = (48, 192, 24, 168),
                  size: int = 144) -> torch.Tensor:
    """(B, 5, 3, H, W) RGB in [-1, 1] -> (B, 5, size, size) gray (0.299R + 0.587G + 0.114B) in [-1, 1].

    ``box`` = (r0, r1, c0, c1) in 192-frame pixels, scaled by H/192.
    """
    b, t, c, h, w = frames.shape
    if c != 3 or h != w:
        raise ValueError(f"Expected square RGB frames (B, T, 3, H, H). Got {tuple(frames.shape)}.")
    s = h / 192
    r0, r1, c0, c1 = (round(v * s) for v in box)
    weights = frames.new_tensor(GRAY).view(1, 1, 3, 1, 1)
    gray = (frames[..., r0:r1, c0:c1] * weights).sum(dim=2)               # (B, T, h', w')
    if gray.shape[-2:] != (size, size):
        gray = F.interpolate(gray, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return gray


def sync_bce(p: torch.Tensor, y: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Eq. 5: mean BCE of p (clamped to [eps, 1 - eps]) against labels y (1 in sync, 0 off)."""
    p = p.float().clamp(eps, 1 - eps)
    y = y.to(p.dtype)
    return -(y * p.log() + (1 - y) * (1 - p).log()).mean()


class ChannelAttention(nn.Module):
    """x * sigmoid(MLP(avgpool x) + MLP(maxpool x)), reduction r (CBAM)."""

    def __init__(self, channels: int, *, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x):
        a = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))
        return x * rearrange(torch.sigmoid(a), "b c -> b c 1 1")


class SpatialAttention(nn.Module):
    """x * sigmoid(conv7x7([mean_c x, max_c x])) (CBAM)."""

    def __init__(self, *, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x):
        a = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(a))


class CBAMBlock(nn.Module):
    """Basic residual block (3x3 conv, BN, ReLU, 3x3 conv, BN) + channel + spatial attention."""

    def __init__(self, in_channels: int, channels: int, *, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
            ChannelAttention(channels), SpatialAttention())
        self.skip = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.skip = nn.Sequential(StridedPointwiseConv(in_channels, channels, stride=stride),
                                      nn.BatchNorm2d(channels))

    def forward(self, x):
        return F.relu(self.body(x) + self.skip(x))


class SyncVisualEncoder(nn.Module):
    """S_v: (B, frames, S, S) gray -> (B, embed_dim) >= 0.

    Stem 7x7 stride 2 (S/2), then per channel stage two CBAM blocks, the first strided
    (S/4, S/8, S/16, S/32 -> 36, 18, 9, 5 at 144), GAP, FC, ReLU.
    """

    def __init__(self, *, frames: int = 5, channels=(32, 64, 128, 256, 512), embed_dim: int = 512):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(frames, channels[0], 7, stride=2, padding=3, bias=False),
                                  nn.BatchNorm2d(channels[0]), nn.ReLU())
        stages = []
        for cin, cout in zip(channels[:-1], channels[1:]):
            stages += [CBAMBlock(cin, cout, stride=2), CBAMBlock(cout, cout)]
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(channels[-1], embed_dim)

    def forward(self, x):
        return F.relu(self.fc(self.stages(self.stem(x)).mean(dim=(2, 3))))


class SyncNet(nn.Module):
    """S: (frames (B, 5, 144, 144) from ``to_sync_input``, mel (B, 20, 80)) -> p (B,) in [0, 1]."""

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        s, a = cfg.sync, cfg.sync.audio
        self.size, self.box, self.frames = s.size, tuple(s.box), s.frames
        self.visual = SyncVisualEncoder(frames=s.frames, channels=s.visual_channels, embed_dim=s.embed_dim)
        self.audio = ResNetSE34L(out_dim=s.embed_dim, blocks=a.blocks, channels=a.channels,
                                 reduction=a.se_reduction, norm="batch", act="relu", n_mels=cfg.mel_bins,
                                 input_norm=a.input_norm)

    def embed(self, frames: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (v, a), each (B, embed_dim) after ReLU."""
        if frames.shape[1:] != (self.frames, self.size, self.size):
            raise ValueError(f"Expected (B, {self.frames}, {self.size}, {self.size}) gray frames "
                             f"(see to_sync_input). Got {tuple(frames.shape)}.")
        return self.visual(frames), F.relu(self.audio(mel))

    def prepare(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 5, 3, H, W) RGB in [-1, 1] -> S_v input, with this S's box and size."""
        return to_sync_input(frames, box=self.box, size=self.size)

    def forward(self, frames: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        v, a = self.embed(frames, mel)
        return F.cosine_similarity(v, a, dim=1, eps=1e-8)
