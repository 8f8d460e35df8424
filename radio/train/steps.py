"""One micro-step of RADIO training: D's loss (+ lazy R1), then G's loss, both backpropagated.

Per micro-batch (b windows of T frames, folded to N = b·T frames for D and VGG):
    fake  = G(target, reference, mel)                      (b, T, 3, R, R)
    L_D   = softplus(D(fake.detach())) + softplus(-D(target))          -> D.grad
    [R1 steps: + γ/2 · r1_every · |∇D(target)|^2, computed in fp32]    -> D.grad
    L_G   = l1·L1 + perceptual·VGG + λ_adv·softplus(-D(fake)) + λ_s·BCE(S(fake, A_centre), 1)
                                                                       -> G.grad (D frozen)
D and G are then stepped together by the caller, each from the same D (simultaneous updates),
which needs one G forward per micro-step instead of two.
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


def fold(x: torch.Tensor) -> torch.Tensor:
    return rearrange(x, "b t c h w -> (b t) c h w")


def micro_step(models: Models, cfg: TrainConfig, target: torch.Tensor, reference: torch.Tensor,
               mel: torch.Tensor, *, scale: float, r1: bool, amp: torch.dtype | None) -> tuple[dict, torch.Tensor]:
    """Backpropagate one micro-batch (losses multiplied by ``scale`` = 1/accumulate).

    Returns detached loss terms and the generated frames.
    """
    dev, lc, disc = target.device, cfg.loss, models.disc
    with autocast(dev, amp):
        fake = models.g_train(target, reference, mel)

    # ---- D ----
    disc.requires_grad_(True)
    with autocast(dev, amp):
        d_loss = losses.d_logistic_loss(disc(fold(target)), disc(fold(fake.detach())))
    (d_loss * scale).backward()
    logs = {"d": d_loss.detach()}
    if r1:
        real = fold(target).detach().requires_grad_(True)
        r1_loss = losses.d_r1_loss(disc(real), real)
        (lc.r1_gamma / 2 * r1_loss * lc.r1_every * scale).backward()
        logs["r1"] = r1_loss.detach()

    # ---- G ----
    disc.requires_grad_(False)
    with autocast(dev, amp):
        flat_fake, flat_real = fold(fake), fold(target)
        terms = {"l1": losses.l1_loss(flat_fake, flat_real)}
        if models.vgg is not None:
            terms["vgg"] = losses.perceptual_loss(models.vgg, flat_fake, flat_real, lc.vgg_layer_weights)
        if lc.adv > 0:
            terms["adv"] = losses.g_nonsaturating_loss(disc(flat_fake))
        if models.sync is not None:
            terms["sync"] = losses.sync_loss(models.sync, fake, mel[:, mel.shape[1] // 2])
    weights = {"l1": lc.l1, "vgg": lc.perceptual, "adv": lc.adv, "sync": lc.sync}
    g_loss = sum(weights[k] * v for k, v in terms.items())
    (g_loss * scale).backward()
    disc.requires_grad_(True)
    logs.update({k: v.detach() for k, v in terms.items()}, g=g_loss.detach())
    return logs, fake.detach()


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema = decay·ema + (1 - decay)·model for parameters; buffers copied."""
    e_params, m_params = list(ema.parameters()), list(model.parameters())
    torch._foreach_lerp_(e_params, m_params, 1.0 - decay)
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
