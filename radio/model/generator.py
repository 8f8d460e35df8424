"""Decoder G: StyleGAN2 layers driven by f_W, fed by the content features (paper §3.1).

Six layers; layer k maps f_d^{k-1} -> f_d^k (f_d^0 = f_c) with sides at 192 (96):
  k   in -> out side          channels      residual from E_c   fidelity input (C / D)
  1   12 -> 12  (6 -> 6)      512 -> 512    f_c^5               -
  2   12 -> 24  (6 -> 12)     512 -> 512    f_c^4               (f_s^5)
  3   24 -> 48  (12 -> 24)    512 -> 256    f_c^3               (f_s^4)
  4   48 -> 96  (24 -> 48)    256 -> 128    f_c^2               (f_s^3)
  5   96 -> 192 (48 -> 96)    128 -> 64     f_c^1               f_s^2  (ViT, patch 3)
  6  192 -> 192 (96 -> 96)     64 -> 64     -                   f_s^1  (ViT, patch 6)
Each layer: [fidelity on the lower half of its input] -> modulated 3x3 conv (2x upsampling
where the side doubles: StyleGAN2's transposed conv + [1,3,3,1] blur) -> noise * learned
scale -> bias + LeakyReLU(0.2)*sqrt(2) -> + f_c^{6-k} -> ToRGB (1x1 modulated, no
demodulation) added to the FIR-upsampled RGB of the previous layer. Output RGB has no tanh
(range [-1, 1] by training).

Modulation uses the non-fused form of StyleGAN2-ADA (scale the input by the style, convolve
with the shared weight, scale the output by the demodulation coefficients): the same maths as
the grouped-conv form, plain cuDNN convolutions, no (B*C_out, C_in, 3, 3) weight tensor.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import ModelConfig
from .layers import BLUR_KERNEL, Blur, EqualLinear, Upsample, fold_fir, fused_leaky_relu
from .vit import ViTBlock


class ModulatedConv2d(nn.Module):
    """x (B, C_in, H, W), w (B, w_dim) -> (B, C_out, H, W) or (B, C_out, 2H, 2W) with ``upsample``.

    Affine w -> style s (B, C_in), bias initialised to 1; weight' = weight * s; with
    ``demodulate`` each output channel is divided by sqrt(sum weight'^2 + 1e-8).
    ``fold_blur`` (a speed switch, same result up to rounding): the transposed convolution and
    the [1,3,3,1] blur after it as one transposed convolution with the folded kernel.
    """

    fold_blur = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, w_dim: int,
                 demodulate: bool = True, upsample: bool = False, eps: float = 1e-8):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.modulation = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.demodulate, self.upsample, self.eps = demodulate, upsample, eps
        self.padding = kernel_size // 2
        if upsample:
            p = (len(BLUR_KERNEL) - 2) - (kernel_size - 1)
            self.blur = Blur(pad=((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        style = self.modulation(w)                                   # (B, C_in)
        weight = self.weight * self.scale                            # (C_out, C_in, k, k)
        x = x * rearrange(style, "b c -> b c 1 1")
        if self.upsample and self.fold_blur:
            kh = self.blur.kernel.shape[0]
            x = F.conv_transpose2d(x, fold_fir(weight.transpose(0, 1), self.blur.kernel), stride=2,
                                   padding=kh - 1 - self.blur.pad[0])
        elif self.upsample:
            x = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2))
        else:
            x = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # sum_{i,kh,kw} (w[o,i] s[b,i])^2 = s^2 @ (sum_k w^2)^T
            d = torch.rsqrt(style.square() @ weight.square().sum(dim=(2, 3)).t() + self.eps)
            x = x * rearrange(d, "b c -> b c 1 1")
        return x


class NoiseInjection(nn.Module):
    """x + scale * noise, noise (B, 1, H, W); scale learned, initialised to 0."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise=None):
        if noise is None:
            return x
        return x + self.weight * noise


class StyledConv(nn.Module):
    """Modulated 3x3 conv -> noise -> bias + LeakyReLU(0.2)*sqrt(2). Without ``noise`` (model.noise:
    false) no noise scale is built: a weight that never gets a gradient would break DDP."""

    fused = False          # speed switch, see layers.FusedLeakyReLU

    def __init__(self, in_channels: int, out_channels: int, *, w_dim: int, upsample: bool = False,
                 noise: bool = True):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim=w_dim, upsample=upsample)
        self.noise = NoiseInjection() if noise else None
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x, w, noise=None):
        x = self.conv(x, w)
        if noise is not None:
            if self.noise is None:
                raise ValueError("This G has no noise inputs (model.noise: false). Got a noise map.")
            x = self.noise(x, noise)
        return fused_leaky_relu(x, self.bias, fused=self.fused)


class ToRGB(nn.Module):
    """1x1 modulated conv without demodulation + bias, plus the (2x FIR-upsampled) skip RGB."""

    def __init__(self, in_channels: int, *, w_dim: int, upsample: bool):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, 3, 1, w_dim=w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.upsample = Upsample() if upsample else None

    def forward(self, x, w, skip=None):
        out = self.conv(x, w) + self.bias
        if skip is not None:
            out = out + (self.upsample(skip) if self.upsample is not None else skip)
        return out


class Generator(nn.Module):
    """G(content features, f_W[, style features][, noise]) -> RGB (B, 3, R, R) in [-1, 1].

    ``fidelity`` maps decoder layer k (1-based) to 'vit' (ablation D) or 'add' (ablation C).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c, sizes, w_dim = cfg.channels, cfg.encoder_sizes, cfg.w_dim
        self.cfg = cfg
        self.in_channels = [c[5], c[4], c[3], c[2], c[1], c[0]]    # f_d^{k-1}, k = 1..6
        self.out_channels = [c[4], c[3], c[2], c[1], c[0], c[0]]
        self.in_sizes = [sizes[5], sizes[4], sizes[3], sizes[2], sizes[1], sizes[0]]
        self.out_sizes = [sizes[4], sizes[3], sizes[2], sizes[1], sizes[0], sizes[0]]
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        for k in range(6):
            up = self.out_sizes[k] > self.in_sizes[k]
            self.convs.append(StyledConv(self.in_channels[k], self.out_channels[k], w_dim=w_dim, upsample=up,
                                         noise=cfg.noise))
            self.to_rgbs.append(ToRGB(self.out_channels[k], w_dim=w_dim, upsample=k > 0 and up))
        self.fidelity = {k: ("vit" if cfg.ablation == "D" else "add") for k in cfg.fidelity_layers}
        self.vit = nn.ModuleDict()
        for k, kind in self.fidelity.items():
            if kind == "vit":
                side = self.in_sizes[k - 1]
                self.vit[str(k)] = ViTBlock(
                    channels=self.in_channels[k - 1], context_channels=c[6 - k], size=side,
                    patch=cfg.patch_size(side), dim=cfg.vit.dim, depth=cfg.vit.m, heads=cfg.vit.heads,
                    dim_head=cfg.vit.head_dim, mlp_ratio=cfg.vit.mlp_ratio)

    def make_noise(self, batch: int, *, device=None, generator: torch.Generator | None = None) -> list:
        """One (B, 1, H_k, H_k) standard-normal map per layer."""
        return [torch.randn(batch, 1, s, s, device=device, generator=generator) for s in self.out_sizes]

    def forward(self, content: list[torch.Tensor], w: torch.Tensor, style: list[torch.Tensor] | None = None,
                noise: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """content: [f_c^1..f_c^6]; w: (B, w_dim); style: [f_s^1..f_s^5] (needed by C/D);
        noise: per-layer maps, or None for no noise."""
        if self.fidelity and style is None:
            raise ValueError(f"Ablation {self.cfg.ablation} needs the style features f_s^i.")
        noise = noise if noise is not None else [None] * 6
        x, rgb = content[5], None
        for k in range(1, 7):
            kind = self.fidelity.get(k)
            if kind == "vit":
                x = self.vit[str(k)](x, style[6 - k])
            elif kind == "add":
                h = x.shape[2]
                x = torch.cat([x[:, :, : h // 2], x[:, :, h // 2:] + style[6 - k][:, :, h // 2:]], dim=2)
            x = self.convs[k - 1](x, w, noise[k - 1])
            if k <= 5:
                x = x + content[5 - k]                      # f_d^k += f_c^{6-k}
            rgb = self.to_rgbs[k - 1](x, w, rgb)
        return rgb
