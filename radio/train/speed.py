"""Speed switches for the training step (``TrainConfig.speed``), applied to built models.

Each switch changes how a step is computed, not what: tests/test_speed.py checks losses and
gradients of every switch against the plain path on a fixed batch. What they do:

- ``fold_blur``: the [1,3,3,1] blur folded into the stride-2 (transposed) convolutions of G and D
  and the ToRGB skip upsampling as one strided depthwise transposed convolution
  (``radio.model.layers.fold_fir``): one pass over the activations instead of two or three.
- ``fused_act``: bias + LeakyReLU·√2 as one autograd node that saves only its output.
- ``channels_last``: G, D, VGG19, S and their inputs in NHWC (tensor-core friendly on GPUs).
- ``compile``: ``torch.compile`` of G's training view, VGG19 and D's non-R1 passes (``Models.d``);
  the R1 pass (double backward) stays eager on ``Models.disc``.
- ``r1_frames``/``r1_amp``/``r1_reuse_forward``: see ``steps.micro_step``.
- ``broadcast_buffers``: see ``build.build_radio`` (G's only buffers are constant blur kernels).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .build import Models
from .config import SpeedConfig

log = logging.getLogger("radio.train")


def set_fast_ops(net: nn.Module, *, fold_blur: bool, fused_act: bool) -> None:
    """Flip the per-module switches the layers read (class defaults stay off)."""
    for m in net.modules():
        if hasattr(type(m), "fold_blur"):
            m.fold_blur = fold_blur
        if hasattr(type(m), "fused"):
            m.fused = fused_act


def apply(models: Models, speed: SpeedConfig) -> Models:
    """Apply the switches to built (and DDP-wrapped) models, in place; returns ``models``."""
    nets = [n for n in (models.generator, models.ema, models.disc, models.vgg, models.sync) if n is not None]
    for net in nets:
        set_fast_ops(net, fold_blur=speed.fold_blur, fused_act=speed.fused_act)
    if speed.channels_last:
        models.memory_format = torch.channels_last
        for net in nets:
            net.to(memory_format=torch.channels_last)
        models.generator.memory_format = models.ema.memory_format = torch.channels_last
    if speed.compile:
        models.g_train = torch.compile(models.g_train, backend=speed.compile_backend)
        models.d_fast = torch.compile(models.disc, backend=speed.compile_backend)
        if models.vgg is not None:
            models.vgg = torch.compile(models.vgg, backend=speed.compile_backend)
    on = [k for k, v in vars(speed).items() if v not in (False, 0, None) and k != "compile_backend"
          and not (k == "broadcast_buffers" and v)]
    if on:
        log.info("speed switches: %s", ", ".join(f"{k}={getattr(speed, k)}" for k in on))
    return models
