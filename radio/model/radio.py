"""RADIO: E_c, E_s, E_a and G wired together (paper §3, Table 2 ablations A-D).

Conventions: images are float RGB in [-1, 1]; (B, 3, R, R) or (B, T, 3, R, R) with the T
frames folded into the batch; mel windows are the model-range log-mel (B, 20, 80) or
(B, T, 20, 80) (rows [4i-8, 4i+12) of frame i, see SPEC "Media conventions").
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .audio import ResNetSE34L
from .config import ModelConfig
from .encoders import ContentEncoder, StyleEncoder, mask_lower_half
from .generator import Generator


class RADIO(nn.Module):
    """The dubbing generator: (target, reference, mel window) -> dubbed frame.

    Noise: in ``train()`` mode with ``cfg.noise`` each decoder layer draws fresh noise unless
    ``noise=`` pins it; in ``eval()`` mode (inference) no noise is added, which keeps video
    frames from flickering. ``noise=`` always wins (with ``cfg.noise`` false G has no noise inputs).
    """

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        self.cfg = cfg
        in_ch = 6 if cfg.ablation == "A" else 3
        self.content_encoder = ContentEncoder(channels=cfg.channels, in_channels=in_ch)
        self.style_encoder = None if cfg.ablation == "A" else StyleEncoder(channels=cfg.channels,
                                                                           style_dim=cfg.style_dim)
        a = cfg.audio
        self.audio_encoder = ResNetSE34L(out_dim=cfg.audio_dim, blocks=a.blocks, channels=a.channels,
                                         reduction=a.se_reduction, norm="instance", act="lrelu",
                                         n_mels=cfg.mel_bins, input_norm=a.input_norm)
        self.generator = Generator(cfg)
        self.memory_format = torch.contiguous_format   # of the folded frames (speed.channels_last)

    def encode(self, target: torch.Tensor, reference: torch.Tensor, mel: torch.Tensor):
        """Frames folded: target, reference (N, 3, R, R), mel (N, 20, 80) ->
        (content features [f_c^1..f_c^6], f_W (N, w_dim), style features [f_s^1..f_s^5] or None)."""
        masked = mask_lower_half(target)
        f_a = self.audio_encoder(mel)
        if self.style_encoder is None:                      # ablation A: Wav2Lip-style input
            return self.content_encoder(torch.cat([masked, reference], dim=1)), f_a, None
        f_s, style = self.style_encoder(reference)
        return self.content_encoder(masked), torch.cat([f_s, f_a], dim=1), style

    def forward(self, target: torch.Tensor, reference: torch.Tensor, mel: torch.Tensor,
                noise: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """target (masked or not; its lower half is masked here), reference: (B[, T], 3, R, R)
        in [-1, 1]; mel: (B[, T], 20, 80) -> (B[, T], 3, R, R) in [-1, 1] (no tanh)."""
        r = self.cfg.resolution
        if target.shape[-3:] != (3, r, r) or reference.shape != target.shape:
            raise ValueError(f"Expected target and reference (B[, T], 3, {r}, {r}). "
                             f"Got {tuple(target.shape)} and {tuple(reference.shape)}.")
        frames = target.ndim == 5
        if frames:
            t = target.shape[1]
            target, reference = (rearrange(x, "b t c h w -> (b t) c h w") for x in (target, reference))
            mel = rearrange(mel, "b t n f -> (b t) n f")
        if self.memory_format != torch.contiguous_format:
            target, reference = (x.contiguous(memory_format=self.memory_format) for x in (target, reference))
        if mel.shape[0] != target.shape[0]:
            raise ValueError(f"Expected one mel window per frame. Got {mel.shape[0]} for {target.shape[0]}.")
        content, w, style = self.encode(target, reference, mel)
        if noise is None and self.training and self.cfg.noise:
            noise = self.generator.make_noise(target.shape[0], device=target.device)
        out = self.generator(content, w, style, noise)
        return rearrange(out, "(b t) c h w -> b t c h w", t=t) if frames else out
