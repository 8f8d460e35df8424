"""Steps with non-finite gradients are skipped, decided on the device (no host sync per step).

A GAN in bf16 can produce an inf or NaN gradient (a loss spike, an overflowing activation, a
learning rate too high). Applied, one such step poisons Adam's moments and every weight for good,
and the run would go on writing NaN checkpoints over the good ones (``run.keep_checkpoints``) and a
NaN ``radio.pt``. So an optimiser step is taken only when every gradient is finite:

- ``found_inf(norms)``: 1.0 on the device when a total gradient norm is inf/NaN, else 0.0. The
  gradients are all-reduced before (DDP, ``dist.all_reduce_grads``), so every rank decides alike;
- ``step(opt, found)``: fused Adam's own skip, the mechanism ``torch.amp.GradScaler`` uses: with
  ``found`` 1 the update, Adam's moments and its step count are all left as they were;
- the EMA of G moves only on applied steps (``steps.update_ema(applied=...)``), and BatchNorm running
  statistics updated by the skipped step's forward are put back (``running_stats``);
- ``SkipCount`` counts skipped steps on the device and is read where the loop syncs anyway (progress
  lines, checkpoints): a warning names the steps skipped, and a run whose last
  ``run.max_skipped_steps`` steps were all skipped has diverged. It stops in one line (``Diverged``,
  exit 1) before any further save, so its newest checkpoints are from before.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from preprocess.errors import JobFailed

log = logging.getLogger("radio.train")


class Diverged(JobFailed):
    """Every step of a long stretch had non-finite gradients: continuing would only burn GPU time."""


def adam(params, *, lr: float, betas, device: torch.device) -> torch.optim.Adam:
    """Adam, fused where torch has a fused kernel for the device (its found_inf skips on the device)."""
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), fused=fused_on(device))


def fused_on(device: torch.device) -> bool:
    return device.type in ("cuda", "cpu")


def grad_norm(module: torch.nn.Module, clip: float = 0.0) -> torch.Tensor:
    """Total L2 norm of ``module``'s gradients (as a float32 0-dim tensor on their device), after
    clipping them to ``clip`` when > 0 (``clip_grad_norm_``'s value: the norm before clipping)."""
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return torch.zeros((), device=next(module.parameters()).device)
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(params, clip)
    return torch.nn.utils.get_total_norm([p.grad for p in params])


def found_inf(norms: list[torch.Tensor]) -> torch.Tensor:
    """1.0 when any of the norms is inf/NaN, else 0.0 (float32, on the norms' device)."""
    return (~torch.isfinite(torch.stack([n.float() for n in norms])).all()).float()


def step(opt: torch.optim.Optimizer, found: torch.Tensor) -> None:
    """``opt.step()`` unless ``found`` is 1: on the device for fused Adam, else with one sync."""
    if opt.param_groups[0].get("fused"):
        opt.found_inf = found              # read by Adam.step, as GradScaler does
        try:
            opt.step()
        finally:
            del opt.found_inf
    elif not bool(found):
        opt.step()


class SkipCount:
    """Steps skipped since the last read, and how many of the newest steps in a row, on the device."""

    def __init__(self, limit: int, lr: str = "optim.lr"):
        self.limit, self.lr = limit, lr
        self.since: torch.Tensor | None = None
        self.streak: torch.Tensor | None = None
        self.first = None          # the first step since the last read

    def add(self, found: torch.Tensor, step: int) -> None:
        if self.since is None:
            self.since, self.streak = torch.zeros_like(found), torch.zeros_like(found)
        if self.first is None:
            self.first = step
        self.since.add_(found)
        self.streak.add_(1).mul_(found)

    def check(self, step: int, saved: Callable[[], str]) -> int:
        """Read the counts (one sync): warn about skipped steps; ``Diverged`` when the newest
        ``limit`` steps were all skipped. ``saved()``: what the user can resume from. Returns the
        number of steps skipped since the last read."""
        if self.since is None:
            return 0
        since, streak = (int(v) for v in torch.stack([self.since, self.streak]).tolist())
        first, self.first = self.first, None
        self.since.zero_()
        if since:
            log.warning("step%s %s: %d skipped for non-finite gradients (inf/NaN; weights, Adam and EMA are "
                        "unchanged by them)", "s" if first < step else "", f"{first}-{step}" if first < step else step, since)
        if self.limit > 0 and streak >= self.limit:
            raise Diverged(
                f"training diverged: the last {streak} steps (to step {step}) all had non-finite gradients, so "
                f"nothing was learnt from them and nothing more was saved; the newest checkpoint is {saved()}. Lower "
                f"{self.lr}, set optim.grad_clip or run.amp=off, and run the same command to resume from it "
                "(or point --output elsewhere to start over).")
        return since


def running_stats(*modules: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, copy) of the BatchNorm running statistics that a forward in train mode updates
    (S's audio encoder): taken before a step, put back by ``restore_stats`` when it is skipped, as
    an inf/NaN forward would otherwise poison them whatever the optimiser does."""
    saved = []
    for module in modules:
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
                saved += [(b, b.detach().clone()) for b in (m.running_mean, m.running_var, m.num_batches_tracked)
                          if b is not None]
    return saved


def restore_stats(saved: list[tuple[torch.Tensor, torch.Tensor]], found: torch.Tensor) -> None:
    """The saved statistics back where ``found`` is 1 (on the device)."""
    if saved:
        skip = found.bool()
        for b, old in saved:
            b.copy_(torch.where(skip, old, b))


def state_dict_non_finite(state: dict) -> list[str]:
    """Keys ('models.generator.w', ...) of floating tensors with inf/NaN in a checkpoint's models
    (state dicts of live modules too: one sync, whatever their number)."""
    keys, flags = [], []
    for name, sd in (state.get("models") or {}).items():
        for k, t in (sd or {}).items():
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                keys.append(f"models.{name}.{k}")
                flags.append(torch.isfinite(t).all())
    if not flags:
        return []
    ok = torch.stack([f.to(flags[0].device) for f in flags]).tolist()
    return [k for k, good in zip(keys, ok) if not good]
