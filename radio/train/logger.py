"""Progress lines and TensorBoard (rank 0 only).

Log lines: ``step 120/2000 | 3.41 it/s 0.293 s/step 54.6 samples/s | g 0.412 l1 0.120 ... | ETA 9m10s``.
TensorBoard event files go to ``<output>/tb``; for a remote output (gs://) they are written to a
local folder and copied there at every checkpoint (TensorBoard reads gs:// directly).
"""
from __future__ import annotations

import logging
import os
import tempfile
import time

import fsspec
import torch

from preprocess import uri as uri_lib

log = logging.getLogger("radio.train")


def _duration(s: float) -> str:
    s = int(max(s, 0))
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s % 60:02d}s"


class Progress:
    """Running means of detached loss tensors (no per-step host sync), printed every ``every`` steps."""

    def __init__(self, total: int, start: int, samples_per_step: int, every: int):
        self.total, self.every, self.samples = total, max(1, every), samples_per_step
        self.sums: dict[str, torch.Tensor] = {}
        self.count, self.t0, self.last_step = 0, time.perf_counter(), start

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.total

    def flush(self, step: int) -> tuple[dict[str, float], str]:
        """Mean losses since the last flush, and the progress line."""
        means = {k: float(v) / max(self.count, 1) for k, v in self.sums.items()}
        now = time.perf_counter()
        steps = max(step - self.last_step, 1)
        dt = max(now - self.t0, 1e-9)
        rate = steps / dt
        means["perf/it_per_s"], means["perf/s_per_step"] = rate, dt / steps
        losses = " ".join(f"{k} {v:.4f}" for k, v in means.items() if not k.startswith("perf/"))
        line = (f"step {step}/{self.total} | {rate:.2f} it/s {dt / steps:.3f} s/step "
                f"{rate * self.samples:.1f} samples/s | {losses} | ETA {_duration((self.total - step) / rate)}")
        self.sums, self.count, self.t0, self.last_step = {}, 0, now, step
        return means, line


def image_grid(rows: list[torch.Tensor]) -> torch.Tensor:
    """rows of (T, 3, H, W) images in [-1, 1] -> one (3, rows·H, T·W) image in [0, 1]."""
    lines = [torch.cat(list(r.detach().float().cpu()), dim=2) for r in rows]
    return ((torch.cat(lines, dim=1) + 1) / 2).clamp(0, 1)


class Board:
    """A SummaryWriter under ``<output>/tb`` (local) or a local mirror uploaded by ``sync()``.
    ``purge_step``: a resumed run's first step (checkpoint step + 1): TensorBoard drops what the
    earlier, killed run logged from that step on, instead of showing those steps twice."""

    def __init__(self, output: str, enabled: bool = True, purge_step: int | None = None):
        self.writer = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.remote = None if uri_lib.is_local(output) else uri_lib.join(output, "tb")
        local = (fsspec.core.url_to_fs(uri_lib.join(output, "tb"))[1] if self.remote is None
                 else tempfile.mkdtemp(prefix="radio-tb-"))
        self.local = local
        self.writer = SummaryWriter(log_dir=local, purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k if "/" in k else f"loss/{k}", v, step)

    def image(self, tag: str, img: torch.Tensor, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, img, step, dataformats="CHW")

    def sync(self) -> None:
        """Flush, and copy the event files to a remote output."""
        if self.writer is None:
            return
        self.writer.flush()
        if self.remote:
            fs, path = fsspec.core.url_to_fs(self.remote)
            for name in os.listdir(self.local):
                fs.put_file(os.path.join(self.local, name), f"{path}/{name}")   # put() globs [ ] * ? in $TMPDIR

    def close(self) -> None:
        if self.writer is not None:
            self.sync()
            self.writer.close()
