"""The RADIO training loop. ``train()`` receives built models, optimisers and a batch iterator
(see ``cli.py`` for the wiring), so tests can drive it with any data.

Every step: ``run.accumulate`` micro-steps (``steps.micro_step``), D's gradients averaged over
ranks, both optimisers stepped, the EMA of G updated. Every ``log_every`` steps a progress line and
TensorBoard scalars; every ``image_every`` an image grid; every ``checkpoint_every`` steps, at the
end and on SIGTERM (preemptible VMs, ``preempt.py``) an atomic checkpoint (``checkpoint.py``) with the
data cursors of every rank (``cursors.py``).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from preprocess.errors import JobFailed

from . import checkpoint, dist, guard
from .build import Models, Optimizers, Resume
from .config import TrainConfig, to_dict
from .cursors import CursorTracker
from .logger import Board, Progress, image_grid
from .preempt import PREEMPTED, StopSignal, stop_context
from .steps import micro_step, preview, to_device, update_ema, ema_decay

log = logging.getLogger("radio.train")


def report_progress(progress, step: int, device, info, result, board, prefix: str = "") -> None:
    """Every ``progress.every`` steps: rank-averaged means into the history, a log line and
    TensorBoard scalars on the main rank (``prefix/`` on names without one)."""
    if not progress.due(step):
        return
    means, line = progress.flush(step)
    means = dist.reduce_mean(means, device)
    result.history.append({"step": step, **means})
    if info.main:
        log.info(line)
        if board is not None:
            board.scalars({f"{prefix}/{k}" if prefix and "/" not in k else k: v for k, v in means.items()}, step)


def checkpoint_or_stop(step: int, last_step: int, every: int, stop: StopSignal, result, save) -> bool:
    """After a step: ``save()`` when a checkpoint is due (every ``every`` steps, the last step, or a
    stop signal on any rank); True when a signal asked the loop to stop (``result.preempted`` is then set)."""
    preempted = stop.checked()
    if preempted or step % every == 0 or step == last_step:
        save()
    if preempted:
        result.preempted = True
        since = stop.since()
        log.warning("stopped at step %d by %s: checkpoint written%s; exit code %d, run the same command "
                    "again to resume", step, stop.name or "a signal to another rank",
                    "" if since is None else f" {since:.1f} s after the signal", PREEMPTED)
    return preempted


@dataclass
class Result:
    step: int
    preempted: bool = False
    history: list[dict] = field(default_factory=list)   # one entry per progress line
    skipped: int = 0                                     # steps skipped for non-finite gradients
    start: int = 0                                       # the step the run started (resumed) from


def check_skips(skips: guard.SkipCount, step: int, last_step: int, progress: Progress, every: int, output: str,
                result: Result) -> None:
    """Where the loop syncs anyway (a progress line or a checkpoint is due): read the skipped-step
    counts; ``guard.Diverged`` (before the save) when the newest steps were all skipped."""
    if progress.due(step) or step % every == 0 or step == last_step:
        result.skipped += skips.check(step, lambda: newest_checkpoint(output))


class OutOfMemory(JobFailed):
    """A step did not fit in the device's memory."""


def is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e))   # torch's CPU allocator


@contextlib.contextmanager
def memory_hint(result: Result, cfg: TrainConfig, batch: int, frames: int, world: int, device: torch.device):
    """torch's out-of-memory error (a traceback with allocator statistics) as one line that says which
    step and what to change: a first step that does not fit is the config's, a late one fragmentation."""
    try:
        yield
    except Exception as e:  # noqa: BLE001
        if not is_out_of_memory(e):
            raise
        mb, acc = batch // (world * cfg.run.accumulate), cfg.run.accumulate
        what = (f"{mb} windows x {frames} frames at {cfg.model.resolution}x{cfg.model.resolution} per micro-step "
                f"on each rank (batch {batch} = {world} ranks x {acc} micro-steps x {mb})")
        first = (str(e).strip().splitlines() or [""])[0][:160]
        advice = ("raise run.accumulate to split each step into smaller micro-steps (the same batch), or lower "
                  "run.batch" if mb > 1 else "this model does not fit this device at one window per micro-step")
        if result.step > result.start + 10:
            advice += ("; it ran for a while first, so it may be the allocator's fragmentation: set "
                       "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True and run the same command to resume")
        raise OutOfMemory(f"out of {device.type.upper()} memory in step {result.step + 1}, {what}: {advice} "
                          f"(torch: {first})") from None


def newest_checkpoint(output: str) -> str:
    newest = checkpoint.latest(output)
    return newest[1] if newest else "none (no checkpoint was written)"


def tracker_for(resume: Resume, info: dist.DistInfo, consumers: int, cfg: TrainConfig) -> CursorTracker:
    return CursorTracker(info.rank, consumers // info.world, resume.cursors, resume.next_slot, cfg.run.windows_log,
                         listing=resume.listing)


def _gather_rng() -> list[dict]:
    state = checkpoint.rng_state()
    if not dist.active():
        return [state]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, state)
    return out


def save_checkpoint(output: str, cfg: TrainConfig, step: int, models: Models, opts: Optimizers,
                    tracker: CursorTracker, consumers: int, info: dist.DistInfo, board: Board | None) -> None:
    """Collectives on every rank; rank 0 writes the checkpoint and the radio.pt export. Weights
    with inf/NaN are never written (``guard.Diverged``; ranks hold the same weights, so all stop)."""
    modules = {"generator": models.generator, "ema": models.ema, "disc": models.disc}
    dist.assert_in_sync(modules, next(models.generator.parameters()).device)
    refuse_non_finite(modules, step, output)
    data, rng = tracker.state(consumers), _gather_rng()
    if info.main:
        state = {"kind": "radio", "step": step, "config": to_dict(cfg),
                 "models": {"generator": models.generator.state_dict(), "ema": models.ema.state_dict(),
                            "disc": models.disc.state_dict()},
                 "optim": {"g": opts.g.state_dict(), "d": opts.d.state_dict()},
                 "rng": rng, "data": data}
        uri = checkpoint.save(output, state, keep=cfg.run.keep_checkpoints)
        sha = checkpoint.export(output, "radio.pt", {"format": "radio-generator/1", "step": step,
                                                     "model_config": to_dict(cfg)["model"],
                                                     "model": models.ema.state_dict()})
        log.info("checkpoint step %d -> %s (radio.pt sha256 %s)", step, uri, sha)
        if board is not None:
            board.sync()
    dist.barrier()


def refuse_non_finite(modules: dict, step: int, output: str, lr: str = "optim.lr") -> None:
    bad = guard.state_dict_non_finite({"models": {n: m.state_dict() for n, m in modules.items()}})
    if bad:
        names = sorted({k.split(".")[1] for k in bad})
        raise guard.Diverged(f"not saving step {step}: inf/NaN weights in {', '.join(names)}; the newest checkpoint "
                             f"is {newest_checkpoint(output)}. Lower {lr} or set optim.grad_clip, and run the "
                             "same command to resume from it.")


def train_step(models: Models, opts: Optimizers, cfg: TrainConfig, batches: Iterator[dict], step: int,
               device: torch.device, amp: torch.dtype | None, *, tracker: CursorTracker | None = None,
               progress: Progress | None = None, skips: guard.SkipCount | None = None):
    """One optimiser step (``run.accumulate`` micro-batches from ``batches``): D and G stepped,
    EMA updated, unless a gradient is inf/NaN (``guard``: then nothing changes; ``skips`` counts it).
    Returns the last micro-step's detached losses and its (target, reference, mel, fake)."""
    run = cfg.run
    r1 = cfg.loss.r1_every > 0 and cfg.loss.r1_gamma > 0 and step % cfg.loss.r1_every == 0
    opts.g.zero_grad(set_to_none=True)
    opts.d.zero_grad(set_to_none=True)
    stats = guard.running_stats(models.generator, models.disc)
    for micro in range(run.accumulate):
        batch = next(batches)
        if tracker is not None:
            tracker.update(batch)
        target, reference, mel = to_device(batch, device)
        last = micro == run.accumulate - 1
        sync_ctx = models.g_train.no_sync() if (dist.active() and not last) else contextlib.nullcontext()
        with sync_ctx:
            logs, fake = micro_step(models, cfg, target, reference, mel, scale=1.0 / run.accumulate, r1=r1, amp=amp)
        if progress is not None:
            progress.add(logs)
    dist.all_reduce_grads(models.disc)
    found = guard.found_inf([guard.grad_norm(models.generator, cfg.optim.grad_clip),
                             guard.grad_norm(models.disc, cfg.optim.grad_clip)])
    guard.step(opts.d, found)
    guard.step(opts.g, found)
    guard.restore_stats(stats, found)
    update_ema(models.ema, models.generator, ema_decay(run.ema_decay, step), applied=1.0 - found)
    if skips is not None:
        skips.add(found, step + 1)
    return logs, (target, reference, mel, fake)


def train(cfg: TrainConfig, models: Models, opts: Optimizers, batches: Iterator[dict], *, output: str,
          device: torch.device, info: dist.DistInfo = dist.DistInfo(), resume: Resume = Resume(),
          consumers: int = 1, amp: torch.dtype | None = None,
          on_step: Callable[[int, dict], None] | None = None, board: Board | None = None,
          stop: StopSignal | None = None) -> Result:
    """Train from ``resume.step`` to ``cfg.run.steps``. ``batches`` yields micro-batches (dicts from
    ``data.ShardStream``); ``on_step(step, logs)`` is called after each step (tests, hooks); ``stop``:
    an installed ``StopSignal`` (else one is installed for the loop)."""
    run, step = cfg.run, resume.step
    tracker = tracker_for(resume, info, consumers, cfg)
    progress = Progress(run.steps, step, run.batch, run.log_every)
    skips = guard.SkipCount(run.max_skipped_steps)
    result = Result(step=step, start=step)
    models.generator.train()
    models.disc.train()
    with stop_context(stop) as stop, memory_hint(result, cfg, run.batch, cfg.data.frames, info.world, device):
        while step < run.steps:
            logs, (target, reference, mel, fake) = train_step(models, opts, cfg, batches, step, device, amp,
                                                              tracker=tracker, progress=progress, skips=skips)
            step += 1
            result.step = step
            tracker.step_done(step)
            if on_step is not None:
                on_step(step, logs)
            check_skips(skips, step, run.steps, progress, run.checkpoint_every, output, result)
            report_progress(progress, step, device, info, result, board)
            if board is not None and info.main and run.image_every and step % run.image_every == 0:
                board.image("samples/masked-ref-G-ema-gt",
                            image_grid(preview(models, target, reference, mel, fake, amp)), step)
            if checkpoint_or_stop(step, run.steps, run.checkpoint_every, stop, result,
                                  lambda: save_checkpoint(output, cfg, step, models, opts, tracker,
                                                          consumers, info, board)):
                break
    return result
