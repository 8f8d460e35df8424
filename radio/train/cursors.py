"""Where the data stream stands, saved in every checkpoint, so a resumed run neither repeats nor skips data.

Consumers (``data.ShardStream``): rank r's DataLoader worker w is consumer ``k = r*W + slot`` of
``n = world*W`` (``W = max(1, data.workers)``). A consumer's stream is fixed by (k, n) and continues
exactly after a cursor (epoch, chunk, offset) of the last sample the trainer consumed from it.

Each rank tracks only its own W consumers (``CursorTracker``); a checkpoint gathers them into one
table, one row per consumer, from the rank that consumed it:

    data = {'consumers': n, 'workers': W, 'cursors': [[k, epoch, chunk, offset], ...], 'next_slot': s,
            'listing': id of the shards and pieces the cursors point into}

A DataLoader hands out batches round-robin over its workers, starting with worker 0 at every
(re)start; ``next_slot`` is the slot whose batch an uninterrupted run would take next (the same on
every rank: each takes ``run.accumulate`` batches per step), and a resumed run's worker w serves slot
``(w + next_slot) % W`` (``ShardStream(worker_shift=...)``), so the resumed run takes the very
batches, in the same order, that the uninterrupted one would have.

Resuming with another layout (``resume_point``): the same n (e.g. 2 ranks x 2 workers -> 4 x 1)
keeps every consumer's cursor (streams continue; only the interleaving of consumers changes); a
different n cannot continue any stream, so every consumer starts the epoch after the newest one in
the checkpoint (the rest of that epoch is skipped, none of it is repeated), with a warning. The same
happens when the dataset's shards changed since the checkpoint (``listing``: shards added, removed or
rewritten, another ``data.piece_mib``): a cursor is a position in one listing and means nothing in
another (checkpoints without ``listing`` are taken as they are).

Debug (``run.windows_log: DIR``, a local folder): after every step each rank appends the windows
it consumed to ``DIR/windows-rank<R>.tsv``, one line each:
``step  consumer  epoch  chunk  offset  clip_id  frame``.
"""
from __future__ import annotations

import logging
import os

import torch

from . import dist

log = logging.getLogger("radio.train")


class CursorTracker:
    """The last (epoch, chunk, offset) this rank consumed from each of its consumers."""

    def __init__(self, rank: int = 0, workers: int = 1, start: dict[int, tuple[int, int, int]] | None = None,
                 next_slot: int = 0, windows_log: str | None = None, listing: str | None = None):
        self.rank, self.workers, self.next_slot, self.listing = rank, max(1, workers), next_slot, listing
        first = rank * self.workers
        self.cursors = {k: tuple(v) for k, v in (start or {}).items() if first <= k < first + self.workers}
        self._log = os.path.join(windows_log, f"windows-rank{rank}.tsv") if windows_log else None
        self._pending: list[str] = []

    def update(self, batch: dict) -> None:
        """Record a consumed batch (its ``cursor`` rows: consumer, epoch, chunk, offset)."""
        rows = batch["cursor"].tolist()
        for k, e, c, o in rows:
            self.cursors[int(k)] = (int(e), int(c), int(o))
        self.next_slot = (int(rows[-1][0]) - self.rank * self.workers + 1) % self.workers
        if self._log:
            frames = batch["center"].tolist()
            self._pending += ["\t".join(map(str, (*row, clip, f))) for row, clip, f in
                              zip(rows, batch["clip_id"], frames)]

    def step_done(self, step: int) -> None:
        """After a step: append its windows to the debug log (before any checkpoint of that step)."""
        if not self._log:
            return
        os.makedirs(os.path.dirname(self._log), exist_ok=True)
        with open(self._log, "a") as f:
            f.writelines(f"{step}\t{line}\n" for line in self._pending)
        self._pending = []

    def state(self, consumers: int) -> dict:
        """The checkpoint's ``data`` entry: every rank's cursors in one table (a collective under torchrun)."""
        rows = torch.full((self.workers, 4), -1, dtype=torch.int64)
        for k, (e, c, o) in self.cursors.items():
            rows[k - self.rank * self.workers] = torch.tensor([k, e, c, o])
        dev = torch.device("cuda", torch.cuda.current_device()) if (
            dist.active() and torch.distributed.get_backend() == "nccl") else torch.device("cpu")
        table = sorted(r for r in dist.all_gather_rows(rows.to(dev)).cpu().tolist() if r[0] >= 0)
        state = {"consumers": consumers, "workers": self.workers, "cursors": table, "next_slot": self.next_slot}
        return {**state, "listing": self.listing} if self.listing else state


def resume_point(data: dict, consumers: int, workers: int) -> tuple[dict[int, tuple[int, int, int]], int]:
    """({consumer: cursor}, next_slot) to continue from a checkpoint's ``data`` with this run's layout."""
    workers = max(1, workers)
    cursors: dict[int, tuple[int, int, int]] = {}
    for k, e, c, o in data.get("cursors", []):
        # one row per consumer; checkpoints before the gathered table held one copy per rank, of
        # which the consuming rank's is the furthest (cursors only move forward)
        cursors[int(k)] = max(cursors.get(int(k), (-1, -1, -1)), (int(e), int(c), int(o)))
    if data.get("consumers") == consumers:
        same = data.get("workers") == workers
        return cursors, int(data.get("next_slot", 0)) if same else 0
    return next_epoch(cursors, consumers, f"data layout changed ({data.get('consumers')} consumers in the "
                                          f"checkpoint, {consumers} now)"), 0


def same_listing(data: dict, listing: str, cursors: dict[int, tuple[int, int, int]], next_slot: int,
                 consumers: int) -> tuple[dict[int, tuple[int, int, int]], int]:
    """``(cursors, next_slot)`` when the checkpoint's cursors point into this ``listing`` (or the
    checkpoint predates listings); else every consumer starts the next epoch."""
    if not cursors or data.get("listing") in (None, listing):
        return cursors, next_slot
    return next_epoch(cursors, consumers, "the dataset's shards changed since the checkpoint (added, removed "
                                          "or rewritten, or another data.piece_mib)"), 0


def next_epoch(cursors: dict[int, tuple[int, int, int]], consumers: int, why: str) -> dict[int, tuple[int, int, int]]:
    """Every consumer at the start of the epoch after the newest one in ``cursors``, with a warning."""
    if not cursors:
        return {}
    epoch = 1 + max(e for e, _, _ in cursors.values())
    log.warning("%s: every consumer starts epoch %d (the rest of epoch %d is skipped)", why, epoch, epoch - 1)
    return {k: (epoch, 0, -1) for k in range(consumers)}
