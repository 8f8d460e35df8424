"""``radio train-sync``: pretrain the sync discriminator S on the shards (paper §3.3 eq. 4-5).

Samples (``ShardStream(mode='sync')``): 5 consecutive frames, the 20-row mel window of frame j and
a label, 1 for j = the centre frame and 0 for audio shifted by >= ``data.sync_min_offset`` frames
in the same segment (half of the samples). Loss: ``sync_bce(S(frames, mel), label)``. Logged:
BCE, accuracy at p > 0.5, mean p of positives and negatives. Checkpoints as ``radio train``
(kind 'sync'); every save also rewrites ``<output>/sync.pt`` for ``loss.sync_uri``.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

import torch

from radio.model.sync import sync_bce

from . import checkpoint, dist, guard
from .build import Resume
from .config import TrainConfig, to_dict
from .logger import Board, Progress
from .steps import autocast, to_model_range
from .preempt import StopSignal, stop_context
from .trainer import (Result, _gather_rng, check_skips, checkpoint_or_stop, memory_hint, refuse_non_finite,
                      report_progress, tracker_for)

log = logging.getLogger("radio.train")


def sync_micro_step(net, train_view, batch: dict, device, *, scale: float, amp) -> dict:
    frames = to_model_range(batch["frames"].to(device))                  # (b, 5, 3, R, R)
    mel, label = batch["mel"].to(device).float(), batch["label"].to(device)
    with autocast(device, amp):
        p = train_view(net.prepare(frames), mel)
    loss = sync_bce(p, label)
    (loss * scale).backward()
    p = p.detach().float()
    pos, neg = label > 0.5, label < 0.5
    return {"bce": loss.detach(), "acc": ((p > 0.5) == pos).float().mean(),
            "p_pos": p[pos].mean() if pos.any() else p.new_tensor(0.0),
            "p_neg": p[neg].mean() if neg.any() else p.new_tensor(0.0)}


def _save(output, cfg, step, net, opt, tracker, consumers, info, board):
    dist.assert_in_sync({"sync": net}, next(net.parameters()).device)
    refuse_non_finite({"sync": net}, step, output, lr="sync_pretrain.lr")
    data, rng = tracker.state(consumers), _gather_rng()
    if info.main:
        state = {"kind": "sync", "step": step, "config": to_dict(cfg), "models": {"sync": net.state_dict()},
                 "optim": {"sync": opt.state_dict()}, "rng": rng,
                 "data": data}
        uri = checkpoint.save(output, state, keep=cfg.run.keep_checkpoints)
        sha = checkpoint.export(output, "sync.pt", {"format": "radio-sync/1", "step": step,
                                                    "model_config": to_dict(cfg)["model"],
                                                    "sync": net.state_dict()})
        log.info("checkpoint step %d -> %s; S export %s/sync.pt sha256 %s (set loss.sync_uri / "
                 "loss.sync_sha256 to these for `radio train`)", step, uri, output.rstrip("/"), sha)
        if board is not None:
            board.sync()
    dist.barrier()


def train_sync(cfg: TrainConfig, net, train_view, opt, batches: Iterator[dict], *, output: str,
               device: torch.device, info: dist.DistInfo = dist.DistInfo(), resume: Resume = Resume(),
               consumers: int = 1, amp=None, board: Board | None = None,
               on_step: Callable[[int, dict], None] | None = None, stop: StopSignal | None = None) -> Result:
    p, run, step = cfg.sync_pretrain, cfg.run, resume.step
    tracker = tracker_for(resume, info, consumers, cfg)
    progress = Progress(p.steps, step, p.batch, run.log_every)
    skips = guard.SkipCount(run.max_skipped_steps, lr="sync_pretrain.lr")
    result = Result(step=step, start=step)
    net.train()
    with stop_context(stop) as stop, memory_hint(result, cfg, p.batch, 5, info.world, device):
        while step < p.steps:
            opt.zero_grad(set_to_none=True)
            stats = guard.running_stats(net)
            for micro in range(run.accumulate):
                batch = next(batches)
                tracker.update(batch)
                ctx = train_view.no_sync() if (dist.active() and micro < run.accumulate - 1) \
                    else contextlib.nullcontext()
                with ctx:
                    logs = sync_micro_step(net, train_view, batch, device, scale=1.0 / run.accumulate, amp=amp)
                progress.add(logs)
            found = guard.found_inf([guard.grad_norm(net)])     # an inf/NaN gradient: step skipped
            guard.step(opt, found)
            guard.restore_stats(stats, found)
            skips.add(found, step + 1)
            step += 1
            result.step = step
            tracker.step_done(step)
            if on_step is not None:
                on_step(step, logs)
            check_skips(skips, step, p.steps, progress, run.checkpoint_every, output, result)
            report_progress(progress, step, device, info, result, board, prefix="sync")
            if checkpoint_or_stop(step, p.steps, run.checkpoint_every, stop, result,
                                  lambda: _save(output, cfg, step, net, opt, tracker, consumers, info, board)):
                break
    return result
