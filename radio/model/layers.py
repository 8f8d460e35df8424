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


def fold_fir(weight: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Full 2-D convolution of every (out, in) slice of ``weight`` (O, I, k, k) with the FIR
    ``kernel`` (kh, kw) as ``upfirdn2d`` applies it -> (O, I, k + kh - 1, k + kw - 1).

    One convolution with this kernel equals "blur, then convolve" (stride-2 downsampling) and
    "transposed convolve, then blur" (stride-2 upsampling): the [1,3,3,1] blur folded into the
    resampling convolution, as StyleGAN2-ADA's ``conv2d_resample`` folds it into one kernel
    launch. Costs one small op on the weights per forward instead of a pass over the activations.
    """
    o, i, k, _ = weight.shape
    kh, kw = kernel.shape
    fir = torch.flip(kernel, [0, 1]).to(weight.dtype).view(1, 1, kh, kw)
    return F.conv_transpose2d(weight.reshape(o * i, 1, k, k), fir).view(o, i, k + kh - 1, k + kw - 1)


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
    """2x FIR upsampling (ToRGB skip path): (B, C, H, W) -> (B, C, 2H, 2W).

    ``fold_blur`` (a speed switch, same result): one strided depthwise transposed convolution
    instead of zero insertion + padding + FIR.
    """

    fold_blur = False

    def __init__(self, *, kernel=BLUR_KERNEL, factor: int = 2):
        super().__init__()
        self.factor = factor
        k = make_kernel(kernel) * factor ** 2
        self.register_buffer("kernel", k, persistent=False)
        p = k.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x):
        kh = self.kernel.shape[0]
        crop = kh - 1 - self.pad[0]      # transposed conv output, minus what the pad did not add
        if self.fold_blur and crop >= 0 and self.pad[0] - self.pad[1] == self.factor - 1:
            c = x.shape[1]
            fir = torch.flip(self.kernel, [0, 1]).to(x.dtype).expand(c, 1, *self.kernel.shape)
            return F.conv_transpose2d(x, fir, stride=self.factor, padding=crop, groups=c)
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class _BiasLeakyReLU(torch.autograd.Function):
    """y = leaky_relu(x + bias) * scale, keeping only y for backward (StyleGAN2's fused_bias_act
    saves its output, not its input): one saved tensor instead of two, and the backward is one
    elementwise pass. Twice differentiable (R1's double backward): the slope mask is piecewise
    constant, so the backward is linear in the incoming gradient."""

    @staticmethod
    def forward(ctx, x, bias, negative_slope: float, scale: float):
        y = x if bias is None else x + bias.view(1, -1, *([1] * (x.ndim - 2)))
        y = F.leaky_relu(y, negative_slope) * scale
        ctx.save_for_backward(y)
        ctx.slope, ctx.scale, ctx.has_bias = negative_slope, scale, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        gain = torch.where(y > 0, ctx.scale, ctx.slope * ctx.scale).to(grad.dtype)   # at 0: the slope, as F.leaky_relu
        gx = grad * gain
        gb = gx.sum(dim=[d for d in range(gx.ndim) if d != 1]) if ctx.has_bias else None
        return gx, gb, None, None


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None = None, *,
                     negative_slope: float = 0.2, scale: float = math.sqrt(2), fused: bool = False) -> torch.Tensor:
    """bias (per channel, dim 1) + LeakyReLU(0.2) * sqrt(2), the plain version of StyleGAN2's fused op;
    ``fused=True`` (a speed switch, same values) runs it as one autograd node (``_BiasLeakyReLU``)."""
    if fused:
        if bias is not None:
            bias = bias.to(x.dtype)
        return _BiasLeakyReLU.apply(x, bias, negative_slope, scale)
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, negative_slope) * scale


class FusedLeakyReLU(nn.Module):
    fused = False          # speed switch (radio.train.speed): one autograd node for bias + act

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return fused_leaky_relu(x, self.bias, fused=self.fused)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate; ``activation=True`` fuses bias + LeakyReLU*sqrt(2)."""

    fused = False          # speed switch, see FusedLeakyReLU

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
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias, fused=self.fused)
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
    ``fold_blur`` (a speed switch, same result up to rounding): the blur and the strided
    convolution as one convolution with the folded kernel (``fold_fir``).
    """

    fold_blur = False

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
        self.downsample = downsample

    def forward(self, x):
        if not (self.fold_blur and self.downsample):
            return super().forward(x)
        blur, conv, *rest = self
        pad0, pad1 = blur.pad
        if pad0 != pad1:
            x = F.pad(x, [pad0, pad1, pad0, pad1])
            pad0 = 0
        x = F.conv2d(x, fold_fir(conv.weight * conv.scale, blur.kernel), conv.bias, stride=2, padding=pad0)
        for layer in rest:
            x = layer(x)
        return x


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


class StridedPointwiseConv(nn.Conv2d):
    """A 1x1 convolution with stride s (a residual projection) as "keep every s-th pixel, then 1x1":
    the same result, the same parameters and state-dict keys as ``nn.Conv2d(cin, cout, 1, stride=s)``.

    Why: oneDNN's CPU backward of a strided 1x1 convolution in channels_last with fewer than 16
    input channels corrupts the heap (torch 2.13.0+cpu, float32: ``free(): invalid next size``,
    the process aborts; reproduced with ``nn.Conv2d(8, 16, 1, stride=2)`` on a (5, 8, 40, 20)
    input). The narrow configs (``configs/smoke-cpu.yaml``: 8-channel audio and sync stages) hit
    it under ``speed.channels_last``; the subsampled form never reaches that kernel.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int | tuple[int, int], bias: bool = False):
        super().__init__(in_channels, out_channels, 1, stride=stride, bias=bias)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        sh, sw = self.stride
        return F.conv2d(x[:, :, ::sh, ::sw], weight, bias)
