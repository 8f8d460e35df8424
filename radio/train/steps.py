"""One micro-step of RADIO training: D's loss (+ lazy R1), then G's loss, both backpropagated.

Per micro-batch (b windows of T frames, folded to N = b·T frames for D and VGG):
    fake  = G(target, reference, mel)                      (b, T, 3, R, R)
    L_D   = softplus(D(fake.detach())) + softplus(-D(target))          -> D.grad
    [R1 steps: + γ/2 · r1_every · |∇D(target)|^2, in fp32 by default]  -> D.grad
    L_G   = l1·L1 + perceptual·VGG + λ_adv·softplus(-D(fake)) + λ_s·BCE(S(fake, A_centre), 1)
                                                                       -> G.grad (D frozen)
D and G are then stepped together by the caller, each from the same D (simultaneous updates),
which needs one G forward per micro-step instead of two.

R1 speed switches (``cfg.speed``): ``r1_frames`` k > 0 takes the penalty on k evenly spread frames
of each T-frame window (R1 is a mean over frames, so the subset estimates the same value without
rescaling, at k/T of the double-backward cost); ``r1_amp`` runs that pass under the run's autocast
(bf16) instead of fp32; ``r1_reuse_forward`` (every frame) differentiates D's own forward on the
real frames instead of running a second one.
"""
from __future__ import annotations

import contextlib

import torch
from einops import rearrange

from radio import losses
from radio.model.encoders import mask_lower_half

from .build import Models
from .config import TrainConfig


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (any shape) -> float32 in [-1, 1] on x's device (a new tensor)."""
    return x.float() / 127.5 - 1.0


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 frames -> [-1, 1] floats on ``device``: target, reference (b, T, 3, R, R); mel (b, T, 20, 80)."""
    nb = device.type == "cuda"
    target = to_model_range(batch["target"].to(device, non_blocking=nb))
    reference = to_model_range(batch["reference"].to(device, non_blocking=nb))
    return target, reference, batch["mel"].to(device, non_blocking=nb).float()


def fold(x: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """(b, T, C, H, W) -> (b·T, C, H, W), in ``memory_format`` (speed.channels_last)."""
    x = rearrange(x, "b t c h w -> (b t) c h w")
    return x if memory_format == torch.contiguous_format else x.contiguous(memory_format=memory_format)


def r1_frame_index(frames: int, k: int) -> list[int]:
    """k evenly spread frames of a T-frame window (k=1: the centre frame; k=0 or k=T: all)."""
    if k <= 0 or k >= frames:
        return list(range(frames))
    return [(2 * j + 1) * frames // (2 * k) for j in range(k)]


def micro_step(models: Models, cfg: TrainConfig, target: torch.Tensor, reference: torch.Tensor,
               mel: torch.Tensor, *, scale: float, r1: bool, amp: torch.dtype | None) -> tuple[dict, torch.Tensor]:
    """Backpropagate one micro-batch (losses multiplied by ``scale`` = 1/accumulate).

    Returns detached loss terms and the generated frames.
    """
    dev, lc, disc, sp, mf = target.device, cfg.loss, models.disc, cfg.speed, models.memory_format
    with autocast(dev, amp):
        fake = models.g_train(target, reference, mel)

    # ---- D ----
    disc.requires_grad_(True)
    reuse = r1 and sp.r1_reuse_forward
    real = fold(target, mf).detach().requires_grad_(reuse)
    with autocast(dev, amp):
        real_pred = (disc if reuse else models.d)(real)       # R1 differentiates the eager D
        d_loss = losses.d_logistic_loss(real_pred, models.d(fold(fake.detach(), mf)))
    logs, d_total = {"d": d_loss.detach()}, d_loss
    if r1:
        if reuse:
            r1_loss = losses.d_r1_loss(real_pred, real)
        else:
            sub = fold(target[:, r1_frame_index(target.shape[1], sp.r1_frames)], mf).detach().requires_grad_(True)
            with autocast(dev, amp if sp.r1_amp else None):
                r1_loss = losses.d_r1_loss(disc(sub), sub)
        d_total = d_total + lc.r1_gamma / 2 * r1_loss * lc.r1_every
        logs["r1"] = r1_loss.detach()
    (d_total * scale).backward()

    # ---- G ----
    disc.requires_grad_(False)
    with autocast(dev, amp):
        flat_fake, flat_real = fold(fake, mf), fold(target, mf)
        terms = {"l1": losses.l1_loss(flat_fake, flat_real)}
        if models.vgg is not None:
            terms["vgg"] = losses.perceptual_loss(models.vgg, flat_fake, flat_real, lc.vgg_layer_weights)
        if lc.adv > 0:
            terms["adv"] = losses.g_nonsaturating_loss(models.d(flat_fake))
        if models.sync is not None:
            terms["sync"] = losses.sync_loss(models.sync, fake, mel[:, mel.shape[1] // 2])
    weights = {"l1": lc.l1, "vgg": lc.perceptual, "adv": lc.adv, "sync": lc.sync}
    g_loss = sum(weights[k] * v for k, v in terms.items())
    (g_loss * scale).backward()
    disc.requires_grad_(True)
    logs.update({k: v.detach() for k, v in terms.items()}, g=g_loss.detach())
    return logs, fake.detach()


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float,
               applied: torch.Tensor | None = None) -> None:
    """ema = decay·ema + (1 - decay)·model for parameters; buffers copied. ``applied`` (a 0-dim
    tensor, 1 or 0: whether the optimiser step was taken, ``guard``): with 0 the EMA stays as it was."""
    e_params, m_params = list(ema.parameters()), list(model.parameters())
    torch._foreach_lerp_(e_params, m_params, 1.0 - decay if applied is None else (1.0 - decay) * applied)
    for eb, mb in zip(ema.buffers(), model.buffers()):
        eb.copy_(mb)


def ema_decay(cfg_decay: float, step: int) -> float:
    """Ramp-up: min(decay, (1 + step) / (10 + step)), so early EMA weights follow G closely."""
    return min(cfg_decay, (1 + step) / (10 + step))


@torch.no_grad()
def preview(models: Models, target: torch.Tensor, reference: torch.Tensor, mel: torch.Tensor,
            fake: torch.Tensor, amp) -> list[torch.Tensor]:
    """Rows for the TensorBoard grid, first window of the batch: masked target, reference,
    G(train mode), EMA G (eval mode, no noise), ground truth."""
    t, r, m = target[:1], reference[:1], mel[:1]
    with autocast(target.device, amp):
        ema_out = models.ema(t, r, m)
    return [mask_lower_half(t[0]), r[0], fake[0], ema_out[0], t[0]]
