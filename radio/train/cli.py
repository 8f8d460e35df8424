"""``radio train`` / ``radio train-sync``: config -> built models -> ``train()`` (resuming when the
output already holds checkpoints).

    radio train --config smoke-cpu --data DATASET --output RUN [--set run.steps=500]
    torchrun --nproc_per_node 8 -m radio.cli train --config paper-192 --data gs://... --output gs://...

``--config`` is a YAML file or a bundled config's name (``configs/*.yaml``, shipped as
``radio/configs/``: ``preprocess.config.resolve_config``).

Running the same command again continues from the newest checkpoint in RUN/checkpoints (it logs
"resuming from step N"); without --config the checkpoint's own config is used. Exit status: 0 when
the run reached its last step, 143 when SIGTERM / Ctrl-C stopped it after a checkpoint (``preempt.py``).
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import gc
import logging

import torch
import yaml

from preprocess import outlock
from preprocess import uri as uri_lib
from preprocess.config import ConfigError, parse_override, plain, set_path

from . import build, checkpoint, dist
from .config import TrainConfig, from_dict, load_train_config, micro_batch, to_dict
from .cursors import same_listing
from .data import DataError, ShardStream, closing_loader, make_loader
from .logger import Board
from .preempt import PREEMPTED, StopSignal, ignore_stop_signals

log = logging.getLogger("radio.train")


def resolve_config(config: str | None, overrides: list[str], output: str,
                   command: str = "train") -> tuple[TrainConfig, dict | None]:
    """The run's config and the checkpoint to resume from (None for a fresh run). Without
    ``config`` a resumed run keeps the checkpoint's config (plus ``overrides``). ConfigError (one
    line, exit 2, before any process group) for checkpoints of the other command or of another model."""
    ckpt = checkpoint.load_newest(output)
    kind = "sync" if command == "train-sync" else "radio"
    if ckpt is not None and ckpt.get("kind") != kind:
        raise ConfigError(f"{output} holds '{ckpt.get('kind')}' checkpoints, not "
                          f"{'train-sync' if kind == 'sync' else 'RADIO'} ones: use another --output.")
    if config is None and ckpt is not None:
        cfg = _with_overrides(ckpt["config"], overrides)
    else:
        cfg = load_train_config(config, overrides)
    if ckpt is not None:
        build.check_model_config(ckpt["config"], cfg)
    return cfg, ckpt


def _with_overrides(base: dict, overrides: list[str]) -> TrainConfig:
    data = plain(base)
    for item in overrides:
        set_path(data, *parse_override(item))
    return from_dict(data)


def _setup(cfg: TrainConfig):
    info = dist.env_info()
    device = build.select_device(cfg.run.device, info)
    info = dist.init(device)
    torch.manual_seed(cfg.run.seed + 1000 * info.rank)
    if not info.main:                       # one voice: rank 0 logs progress, others warnings only
        log.setLevel(logging.WARNING)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = cfg.run.tf32
        torch.backends.cudnn.allow_tf32 = cfg.run.tf32
    return info, device


def _write_config(output: str, cfg: TrainConfig, info: dist.DistInfo) -> None:
    if info.main:
        uri_lib.write_bytes_atomic(uri_lib.join(output, "config.yaml"),
                                   yaml.safe_dump(plain(to_dict(cfg)), sort_keys=False).encode())


def _announce(ckpt: dict | None, output: str, total: int, info: dist.DistInfo) -> None:
    if not info.main:
        return
    if ckpt is None:
        log.info("starting a new run in %s (%d steps)", output, total)
    elif int(ckpt["step"]) >= total:
        log.info("resuming from step %d: already at the last step (%d); nothing to do", ckpt["step"], total)
    else:
        log.info("resuming from step %d of %d (checkpoint in %s)", ckpt["step"], total, output)


def _run_loop(loop, *args, output: str, info, **kwargs) -> int:
    """Run a training loop with TensorBoard on the main rank; PREEMPTED exit code after SIGTERM."""
    step = kwargs["resume"].step
    board = Board(output, purge_step=step + 1 if step else None) if info.main else None
    try:
        result = loop(*args, output=output, info=info, board=board, **kwargs)
    finally:
        if board is not None:
            board.close()
    return PREEMPTED if result.preempted else 0


def _data(cfg: TrainConfig, ckpt: dict | None, data: str, output: str, info: dist.DistInfo, device, *,
          mode: str, batch: int, modules: dict, optimizers: dict):
    """Restore ``modules``/``optimizers`` from ``ckpt``, then the batch iterator continuing its data
    stream: (resume, consumers, batches)."""
    mb = micro_batch(batch, info.world, cfg.run.accumulate)
    workers = max(1, cfg.data.workers)
    consumers = info.world * workers
    resume = build.Resume()
    if ckpt is not None:
        resume = build.restore(ckpt, modules, optimizers, consumers, workers)
    if info.main:                             # the run's one writer: what its killed writes left
        checkpoint.remove_stale_temporaries(output)
    _write_config(output, cfg, info)
    stream = ShardStream(data, cfg.data, resolution=cfg.model.resolution, mode=mode, rank=info.rank,
                         world=info.world)
    start, shift = same_listing((ckpt or {}).get("data") or {}, stream.listing, resume.cursors, resume.next_slot,
                                consumers)
    stream.start, stream.worker_shift = start, shift
    resume = dataclasses.replace(resume, cursors=start, next_slot=shift, listing=stream.listing)
    unfed = dist.agree(stream.unfed)          # on every rank, or a lone rank fails inside step 1
    if unfed:
        raise DataError(unfed)
    if info.main:
        log.info("data: %d shards in %s, %d consumers (%d ranks x %d workers); batch %d = %d ranks x %d "
                 "accumulation x %d windows of %d frames; resolution %d; amp %s", len(stream.shards), data,
                 consumers, info.world, workers, batch, info.world, cfg.run.accumulate, mb, cfg.data.frames,
                 cfg.model.resolution, build.amp_dtype(cfg, device))
    batches = iter(make_loader(stream, mb, pin_memory=device.type == "cuda", worker_init_fn=ignore_stop_signals))
    if ckpt is not None:
        build.restore_rng(ckpt, info)
    return resume, consumers, batches


def run_radio(cfg: TrainConfig, ckpt: dict | None, data: str, output: str, *, on_step=None) -> int:
    from .trainer import train

    with StopSignal() as stop:                # from the start: a notice during set-up stops after step 1
        info, device = _setup(cfg)
        try:
            _announce(ckpt, output, cfg.run.steps, info)
            models, opts = build.build_radio(cfg, device, info)
            if ckpt is not None:
                ckpt = checkpoint.upgrade_noise_free(ckpt, cfg.model, output)
            resume, consumers, batches = _data(
                cfg, ckpt, data, output, info, device, mode="radio", batch=cfg.run.batch,
                modules={"generator": models.generator, "ema": models.ema, "disc": models.disc},
                optimizers={"g": opts.g, "d": opts.d})
            del ckpt
            with closing_loader(batches):
                rc = _run_loop(train, cfg, models, opts, batches, output=output, device=device, info=info,
                               resume=resume, consumers=consumers, amp=build.amp_dtype(cfg, device),
                               on_step=on_step, stop=stop)
        except BaseException:
            dist.shutdown(clean=False)        # no barrier: another rank may be inside a collective
            raise
        dist.shutdown()
        return rc


def run_sync(cfg: TrainConfig, ckpt: dict | None, data: str, output: str, *, on_step=None) -> int:
    from .sync_trainer import train_sync

    with StopSignal() as stop:
        info, device = _setup(cfg)
        try:
            _announce(ckpt, output, cfg.sync_pretrain.steps, info)
            net, view, opt = build.build_sync(cfg, device)
            resume, consumers, batches = _data(cfg, ckpt, data, output, info, device, mode="sync",
                                                  batch=cfg.sync_pretrain.batch, modules={"sync": net},
                                                  optimizers={"sync": opt})
            del ckpt
            with closing_loader(batches):
                rc = _run_loop(train_sync, cfg, net, view, opt, batches, output=output, device=device,
                               info=info, resume=resume, consumers=consumers, amp=build.amp_dtype(cfg, device),
                               on_step=on_step, stop=stop)
        except BaseException:
            dist.shutdown(clean=False)
            raise
        dist.shutdown()
        return rc


def main(args) -> int:
    """Entry from ``radio.cli``: args.command in {train, train-sync}; args.data, args.output,
    args.config, args.overrides."""
    # at exit, skip the interpreter's full garbage collections over torch's objects (seconds on a busy
    # host): a preempted rank has written its checkpoint and should be gone long before torchrun's SIGKILL
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    from radio import checks

    # one run per output, held by the main rank: a second start on it (a VM watcher restarting a run
    # still saving, a retry wrapper) removed the live run's checkpoint temporaries and both wrote
    # checkpoints/, radio.pt and tb/ in turn
    lock = outlock.hold(args.output, args.command) if dist.env_info().main else contextlib.nullcontext()
    try:
        if not dist.env_info().main:
            outlock.check_not_held_by_another_job(args.output)
        with lock:
            cfg, ckpt = resolve_config(args.config, list(args.overrides or []), args.output, args.command)
            if args.command == "train-sync" and cfg.data.frames != cfg.model.sync.frames:
                raise ConfigError(f"train-sync needs data.frames == model.sync.frames ({cfg.model.sync.frames}). "
                                  f"Got {cfg.data.frames}.")
            checks.train(cfg, args.command)
            if args.command == "train-sync":
                rc = run_sync(cfg, ckpt, args.data, args.output)
            else:
                rc = run_radio(cfg, ckpt, args.data, args.output)
    except BaseException as e:
        if dist.env_info().world > 1:
            _exit_rank(e, args)
        raise
    if dist.env_info().main:
        _report_export(args.output, "sync.pt" if args.command == "train-sync" else "radio.pt")
    if dist.env_info().world > 1:
        dist.leave(rc)                        # a normal exit can abort in gloo's threads (dist.leave)
    return rc


def _exit_rank(e: BaseException, args) -> None:
    """A failed rank under torchrun: its error (one line for a user's mistake, else the traceback),
    then ``dist.leave`` at once. A normal exit could wait on the other ranks (the gloo group's
    teardown, exit handlers), which wait inside a collective for this one; gone, it lets torchrun
    stop them and the job end non-zero instead of hanging until the backend's timeout."""
    import traceback

    from radio.cli import report

    rc = 1
    try:
        rc = report(e, args)
        if rc is None:
            traceback.print_exception(e)
            rc = 1
    finally:
        dist.leave(rc)


def _report_export(output: str, name: str) -> None:
    """Say where the exported model is and its sha256 (what ``--set checkpoint_sha256=…`` pins)."""
    from preprocess.weights import sha256_file

    uri = uri_lib.join(output, name)
    if not uri_lib.exists(uri):
        return
    if uri_lib.is_local(uri):
        digest = sha256_file(uri)
    else:
        import hashlib

        digest = hashlib.sha256(uri_lib.read_bytes(uri)).hexdigest()
    print(f"{name}: {uri}\n  sha256 {digest}")
