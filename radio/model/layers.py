"""StyleGAN2 building blocks in plain torch (after rosinality/stylegan2-pytorch ``model.py``).

Everything here runs on any device with stock torch ops: ``upfirdn2d`` is the native
(upsample, pad, FIR filter, downsample) path, written as a depthwise ``conv2d``; there is no
custom CUDA and nothing is compiled. Equalised learning rate (weights drawn N(0, 1) and scaled
by 1/sqrt(fan_in) at run time) as in StyleGAN2.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BLUR_KERNEL = (1, 3, 3, 1)


def make_kernel(k: tuple[int, ...] | list[int]) -> torch.Tensor:
    """Separable 1-D taps -> normalised 2-D FIR kernel (sums to 1)."""
    k = torch.tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, *, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Zero-insert ``up``x, pad (pad0, pad1) on both axes (negative crops), FIR, keep every ``down``-th.

    x: (B, C, H, W) -> (B, C, (H*up + pad0 + pad1 - kh + 1) // down, ...). Same result as
    rosinality's ``upfirdn2d_native``.
    """
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(b, c, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    kh, kw = kernel.shape
    weight = torch.flip(kernel, [0, 1]).to(x.dtype).expand(c, 1, kh, kw)
    return F.conv2d(x, weight, stride=down, groups=c)


class Blur(nn.Module):
    """FIR low-pass ([1,3,3,1] by default) with explicit padding; ``upsample_factor`` rescales the gain."""

    def __init__(self, *, kernel=BLUR_KERNEL, pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        k = make_kernel(kernel) * upsample_factor ** 2
        self.register_buffer("kernel", k, persistent=False)
        self.pad = pad

    def forward(self, x):
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR upsampling (ToRGB skip path): (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, *, kernel=BLUR_KERNEL, factor: int = 2):
        super().__init__()
        self.factor = factor
        k = make_kernel(kernel) * factor ** 2
        self.register_buffer("kernel", k, persistent=False)
        p = k.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None = None, *,
                     negative_slope: float = 0.2, scale: float = math.sqrt(2)) -> torch.Tensor:
    """bias (per channel, dim 1) + LeakyReLU(0.2) * sqrt(2), the plain version of StyleGAN2's fused op."""
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, negative_slope) * scale


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return fused_leaky_relu(x, self.bias)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate; ``activation=True`` fuses bias + LeakyReLU*sqrt(2)."""

    def __init__(self, in_dim: int, out_dim: int, *, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x):
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias)


class EqualConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.stride, self.padding = stride, padding
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class ConvLayer(nn.Sequential):
    """[Blur] -> EqualConv2d (stride 2 when ``downsample``) -> [bias + LeakyReLU(0.2)*sqrt(2)].

    (B, C_in, H, W) -> (B, C_out, H, W), or (B, C_out, H/2, W/2) with ``downsample``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 downsample: bool = False, bias: bool = True, activate: bool = True):
        layers = []
        if downsample:
            p = (len(BLUR_KERNEL) - 2) + (kernel_size - 1)
            layers.append(Blur(pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channels))
        super().__init__(*layers)


class ResDownBlock(nn.Module):
    """Residual down-block: two 3x3 convs (LeakyReLU 0.2, the second one strided) + 1x1 strided skip.

    (B, C_in, H, W) -> (B, C_out, H/2, W/2); sum scaled by 1/sqrt(2) as in StyleGAN2's ResBlock.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = ConvLayer(in_channels, in_channels, 3)
        self.conv2 = ConvLayer(in_channels, out_channels, 3, downsample=True)
        self.skip = ConvLayer(in_channels, out_channels, 1, downsample=True, activate=False, bias=False)

    def forward(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)
