"""Distributed helpers (after stylegan2-pytorch ``distributed.py``): every one is a no-op in a
single process, so the training loop reads the same with and without ``torchrun``.

``torchrun --nproc_per_node N -m radio.cli train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
``init()`` reads them and starts the process group (NCCL on CUDA, gloo on CPU), plus a gloo
group for host-side flags under NCCL (``any_flag``: the per-step stop vote costs no GPU sync).

G is wrapped in ``DistributedDataParallel`` (one forward and one backward per micro-step).
D is not: its step runs two forwards (fake, real), the lazy R1 pass differentiates through
``autograd.grad(create_graph=True)``, and it is frozen while G's adversarial loss flows through
it; DDP's reducer supports none of that cleanly, so D's gradients are averaged explicitly with
``all_reduce_grads`` after the accumulation micro-steps (the same arithmetic, without overlap).
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn


_FLAGS = None      # gloo group for ``any_flag`` when the main backend is NCCL (None: the default group)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank layout from torchrun's environment (single process when unset)."""
    return DistInfo(rank=int(os.environ.get("RANK", 0)), world=int(os.environ.get("WORLD_SIZE", 1)),
                    local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def init(device: torch.device) -> DistInfo:
    """Start the process group when WORLD_SIZE > 1 (idempotent); returns the layout."""
    global _FLAGS
    info = env_info()
    if info.world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        _FLAGS = dist.new_group(backend="gloo") if backend != "gloo" else None
    return info


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shutdown(clean: bool = True) -> None:
    """Close the process group. ``clean`` (every rank finished the run): a barrier first, so that no
    rank closes its connections while another still talks on them (gloo aborts then). After an error
    (``clean=False``) no collective at all: the other ranks may be inside another one (a DDP
    all-reduce, a checkpoint's barrier) that a barrier here would never match, and every rank would
    wait for the backend's timeout (a stuck, billed machine). NCCL's communicators are aborted;
    gloo's are left to the process's exit, which ``cli.main`` makes at once (``leave``): the
    other ranks then see their peer gone, or torchrun stops them."""
    global _FLAGS
    if dist.is_available() and dist.is_initialized():
        if clean:
            try:
                dist.barrier()
            finally:
                dist.destroy_process_group()
        else:
            _abort()
    _FLAGS = None


def leave(rc: int) -> NoReturn:
    """End this rank's process now with ``rc``, without the interpreter's finalization (``os._exit``),
    once everything it wrote is closed: the last use of a multi-rank run, finished, preempted or failed.

    Why not a normal exit: gloo's worker threads drop their finished collectives when they next run,
    and ``destroy_process_group`` neither joins them nor frees the group (DDP keeps it). A worker that
    drops one after the interpreter began finalizing needs the GIL to release the collective's tensors,
    is ended by Python inside that C++ destructor, and the rank aborts (``terminate called without an
    active exception``, SIGABRT): torchrun then reports a finished run as failed and a supervisor would
    start it again (core dump: ``ProcessGroupGloo::runLoop`` -> ``~AsyncWork`` -> ``take_gil`` ->
    ``pthread_exit``; 1 run in 30 of a two-rank test under load; pytorch/pytorch#179291). A failed rank
    also must not wait in a teardown for ranks that wait inside a collective for it."""
    try:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(rc)


def _abort() -> None:
    """Abort the process groups where the backend can (NCCL) without waiting on any other rank."""
    try:
        if dist.get_backend() == "nccl":
            from torch.distributed.distributed_c10d import _abort_process_group

            _abort_process_group()
    except Exception:  # noqa: BLE001  (already failing: the process exits next)
        pass


def agree(message: str | None) -> str | None:
    """The first non-None ``message`` of any rank, on every rank: a start-up check whose verdict may
    differ between ranks fails on all of them at the same point, before any of them starts a step
    (one rank failing alone would leave the others inside the first step's collectives)."""
    if not active():
        return message
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, message, group=_FLAGS)
    return next((m for m in out if m), None)


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers of rank ``src`` to every rank."""
    if not active():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)


def all_reduce_grads(module: nn.Module) -> None:
    """Average ``.grad`` of ``module``'s parameters over ranks (one flat buffer)."""
    if not active():
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of scalar logs over ranks (identity in one process)."""
    if not active() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def all_gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped int64 (n, k) tensors from every rank along dim 0."""
    if not active():
        return rows
    out = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(out, rows)
    return torch.cat(out)


def any_flag(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. one rank got SIGTERM): one int32 MAX
    over CPU/gloo, cheap enough for every step."""
    if not active():
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_FLAGS)
    return bool(t.item())


def assert_in_sync(modules: dict[str, nn.Module], device: torch.device) -> None:
    """Raise when ranks hold different weights (a checksum per module, compared by min/max)."""
    if not active():
        return
    sums = torch.stack([sum(p.detach().double().sum() for p in m.parameters()) for m in modules.values()])
    lo, hi = sums.to(device), sums.clone().to(device)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    bad = [name for name, a, b in zip(modules, lo.tolist(), hi.tolist()) if a != b]
    if bad:
        raise RuntimeError(f"DDP ranks diverged: {bad} differ across ranks.")
