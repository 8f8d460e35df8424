"""Training samples streamed from the Parquet shards of ``radio preprocess`` (any fsspec URI).

A RADIO sample (``mode='radio'``) is one T-frame window of a segment (T=5):
    target    (T, 3, R, R) uint8   frames i-2..i+2, resized 192 -> R (``model.resolution``)
    reference (T, 3, R, R) uint8   one frame per target frame, drawn uniformly from the same
                                   segment (or from the speaker's segments in the same shuffle
                                   chunk, ``data.reference``), never from i-2..i+2: a reference
                                   inside the window would show the answer, and G would learn
                                   to copy its mouth instead of listening to the audio (SPEC)
    mel       (T, 20, 80) float32  each frame's audio window, model range clip(1.6L+2.4, -4, 4)
A sync sample (``mode='sync'``, ``radio train-sync``) is frames (5, 3, R, R) uint8, the 20-row
audio window of frame ``j`` (20, 80) and ``label`` = 1 when j = i (in sync) or 0 when j is at least
``data.sync_min_offset`` frames away in the same segment (half the samples).
Both carry ``cursor`` = (consumer, epoch, chunk, offset) so the trainer can checkpoint the stream.

Splitting: the stream has ``n = world_size x max(1, num_workers)`` consumers; consumer
``k = rank x workers + worker_id``. With at least n shards, shard ``s`` (sorted by name) goes to
consumer ``s % n`` (shard-level split). With fewer shards than consumers every consumer reads
every shard and keeps row ``r`` of shard ``s`` when ``(s + r) % n == k`` (row-level fallback: no
row is seen twice, but every consumer pays the reads). A consumer that ends up with no usable
row raises instead of hanging.

Shuffling and resume: each epoch, a consumer shuffles its shards (seeded by data.seed, consumer,
epoch) and cuts them into chunks of ``data.shuffle_shards`` shards; a chunk is loaded whole, its
samples (``samples_per_row`` windows per segment) are planned and fully shuffled with a generator
seeded by (seed, consumer, epoch, chunk), then decoded one by one. The shuffle buffer is thus the
chunk, and a cursor is enough to restart the exact stream: skip to its chunk, re-plan, continue.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from preprocess import schema, shards
from preprocess.audio import mel_windows, model_input

from .config import DataConfig, FilterConfig

log = logging.getLogger("radio.train.data")

META_COLUMNS = ["clip_id", "speaker_id", "split", "n_frames", "det_score_min", "landmark_jitter",
                "crop_shake", "face_size", "outside_frac"]
DATA_COLUMNS = ["frames", "mel", "mel_shape"]
_RULES = (  # (filter field, column, passes(value, threshold))
    ("det_score_min", "det_score_min", lambda v, t: v >= t),
    ("landmark_jitter_max", "landmark_jitter", lambda v, t: v <= t),
    ("crop_shake_max", "crop_shake", lambda v, t: v <= t),
    ("face_size_min", "face_size", lambda v, t: v >= t),
    ("outside_frac_max", "outside_frac", lambda v, t: v <= t),
)


def row_rejection(meta: dict, filters: FilterConfig, split: str | None, min_frames: int) -> str | None:
    """Why a row (its metadata columns) is not used, or None when it passes every filter."""
    row_split = meta.get("split")
    # rows without a split (a corpus preprocessed from a glob, no manifest) count as training data
    if split is not None and row_split != split and not (row_split is None and split == "train"):
        return "split"
    if int(meta["n_frames"]) < min_frames:
        return "min_frames"
    for name, column, ok in _RULES:
        threshold = getattr(filters, name)
        if threshold is None:
            continue
        value = meta.get(column)
        if value is None or not ok(float(value), float(threshold)):
            return column
    return None


def assign(n_shards: int, k: int, n: int) -> tuple[list[int], bool]:
    """Shards consumer k of n reads, and whether rows are split too (fewer shards than consumers)."""
    if not 0 <= k < n:
        raise ValueError(f"Expected consumer 0 <= k < n. Got k={k}, n={n}.")
    if n_shards >= n:
        return [s for s in range(n_shards) if s % n == k], False
    return list(range(n_shards)), True


@dataclass
class Row:
    """One usable segment of a loaded chunk (frames stay JPEG/PNG-encoded until a sample needs them)."""
    clip_id: str
    speaker: str | None
    frames: list
    mel: np.ndarray            # (4n, 80) raw log10 mel
    shard: int
    index: int

    @property
    def n(self) -> int:
        return len(self.frames)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(x) for x in key])


class ShardStream(IterableDataset):
    """Endless, seeded sample stream over the shards of ``dataset`` (see the module docstring).

    ``resolution``: side R of the returned frames. ``rank``/``world``: this process's place in
    DDP. ``start``: {consumer: (epoch, chunk, offset)} of the last sample the trainer consumed;
    the stream continues right after it. ``worker_shift``: DataLoader worker w serves consumer slot
    ``(w + worker_shift) % workers`` (a resumed run starts with the slot whose turn it was).
    """

    def __init__(self, dataset: str, cfg: DataConfig, *, resolution: int, mode: str = "radio",
                 rank: int = 0, world: int = 1, start: dict[int, tuple[int, int, int]] | None = None,
                 shard_list: list[str] | None = None, worker_shift: int = 0):
        if mode not in ("radio", "sync"):
            raise ValueError(f"mode must be 'radio' or 'sync'. Got {mode!r}.")
        self.dataset, self.cfg, self.mode = dataset, cfg, mode
        self.resolution, self.rank, self.world = resolution, rank, world
        self.start, self.worker_shift = dict(start or {}), worker_shift
        self.shards = list(shard_list) if shard_list is not None else shards.list_shards(dataset)
        if not self.shards:
            raise FileNotFoundError(f"No row shards under {dataset!r} (expected {shards.ROWS}/*.parquet "
                                    "written by `radio preprocess`).")
        self.half = cfg.frames // 2
        extra = 1 if mode == "radio" else 0           # a reference outside the window must exist
        self.min_frames = max(cfg.filters.min_frames, cfg.frames + extra)

    # ---- consumers ----------------------------------------------------------------------------
    def consumer(self) -> tuple[int, int]:
        """(k, n) of the calling process / DataLoader worker."""
        info = get_worker_info()
        workers, wid = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + (wid + self.worker_shift) % workers, self.world * workers

    def __iter__(self):
        k, n = self.consumer()
        return self.iter_consumer(k, n, self.start.get(k))

    # ---- loading -------------------------------------------------------------------------------
    def load_chunk(self, shard_ids: list[int], k: int, n: int, row_split: bool,
                   stats: Counter | None = None) -> list[Row]:
        """Read ``shard_ids`` and keep this consumer's rows that pass the filters."""
        rows = []
        for s in shard_ids:
            table = shards.read_shard(self.shards[s], META_COLUMNS + DATA_COLUMNS)
            metas = table.select(META_COLUMNS).to_pylist()
            keep = []
            for r, meta in enumerate(metas):
                if row_split and (s + r) % n != k:
                    continue
                why = row_rejection(meta, self.cfg.filters, self.cfg.split, self.min_frames)
                if stats is not None:
                    stats[why or "kept"] += 1
                if why is None:
                    keep.append(r)
            if not keep:
                continue
            data = table.select(DATA_COLUMNS).take(keep).to_pylist()
            for r, d in zip(keep, data):
                mel = np.frombuffer(d["mel"], np.float16).reshape(d["mel_shape"]).astype(np.float32)
                rows.append(Row(clip_id=metas[r]["clip_id"], speaker=metas[r]["speaker_id"],
                                frames=d["frames"], mel=mel, shard=s, index=r))
        return rows

    # ---- planning (cheap: indexes only) --------------------------------------------------------
    def plan_chunk(self, rows: list[Row], rng: np.random.Generator) -> list[tuple]:
        """Sample plans of one chunk, shuffled: radio (row, center, ((ref_row, ref_frame) x T));
        sync (row, center, audio_center, label)."""
        h, cfg = self.half, self.cfg
        pools: dict[str, list[int]] = {}
        if cfg.reference != "clip":
            for idx, row in enumerate(rows):
                if row.speaker:
                    pools.setdefault(row.speaker, []).append(idx)
        plans = []
        for idx, row in enumerate(rows):
            centers = np.arange(h, row.n - h)
            if cfg.samples_per_row and cfg.samples_per_row < len(centers):
                centers = np.sort(rng.choice(centers, cfg.samples_per_row, replace=False))
            pool = [idx]
            if cfg.reference != "clip" and row.speaker:
                pool = pools[row.speaker]
            for i in centers.tolist():
                if self.mode == "radio":
                    plans.append((idx, i, self._references(rows, pool, idx, i, rng)))
                else:
                    plans.append((idx, i, *self._sync_audio(row.n, i, rng)))
        order = rng.permutation(len(plans))
        return [plans[j] for j in order]

    def _references(self, rows, pool, idx, i, rng) -> tuple:
        """T (row, frame) pairs, uniform over the pool's frames, outside frames i-h..i+h of row idx."""
        sizes = np.array([rows[p].n for p in pool])
        cum = np.cumsum(sizes)
        refs = []
        while len(refs) < self.cfg.frames:
            u = int(rng.integers(cum[-1]))
            j = int(np.searchsorted(cum, u, side="right"))
            p, f = pool[j], u - (int(cum[j - 1]) if j else 0)
            if p == idx and abs(f - i) <= self.half:
                continue
            refs.append((p, f))
        return tuple(refs)

    def _sync_audio(self, n: int, i: int, rng) -> tuple[int, float]:
        """(audio center, label): half the time a center >= sync_min_offset frames away.
        A segment too short for such a shift gives an in-sync pair."""
        if rng.random() < 0.5:
            far = [j for j in range(self.half, n - self.half) if abs(j - i) >= self.cfg.sync_min_offset]
            if far:
                return int(far[int(rng.integers(len(far)))]), 0.0
        return i, 1.0

    # ---- decoding ------------------------------------------------------------------------------
    def _frame(self, row: Row, f: int) -> np.ndarray:
        img = schema.decode_image(row.frames[f])
        if img.shape[0] != self.resolution:
            interp = cv2.INTER_AREA if img.shape[0] > self.resolution else cv2.INTER_CUBIC
            img = cv2.resize(img, (self.resolution, self.resolution), interpolation=interp)
        return img

    def _frames(self, pairs) -> torch.Tensor:
        return torch.from_numpy(np.stack([self._frame(r, f) for r, f in pairs])).permute(0, 3, 1, 2).contiguous()

    def realise(self, rows: list[Row], plan: tuple, cursor: tuple) -> dict:
        idx, i = plan[0], plan[1]
        row, h = rows[idx], self.half
        window = list(range(i - h, i + h + 1))
        out = {"target" if self.mode == "radio" else "frames": self._frames([(row, f) for f in window]),
               "cursor": torch.tensor(cursor, dtype=torch.int64), "clip_id": row.clip_id,
               "center": torch.tensor(i)}
        if self.mode == "radio":
            refs = plan[2]
            out["reference"] = self._frames([(rows[p], f) for p, f in refs])
            out["mel"] = torch.from_numpy(model_input(mel_windows(row.mel, window)).astype(np.float32))
            out["ref_frame"] = torch.tensor([f for _, f in refs])
            out["ref_same_clip"] = torch.tensor([p == idx for p, _ in refs])
        else:
            j, label = plan[2], plan[3]
            out["mel"] = torch.from_numpy(model_input(mel_windows(row.mel, [j])[0]).astype(np.float32))
            out["label"] = torch.tensor(label, dtype=torch.float32)
            out["audio_center"] = torch.tensor(j)
        return out

    # ---- the stream ----------------------------------------------------------------------------
    def iter_consumer(self, k: int, n: int, start: tuple[int, int, int] | None = None, *,
                      epochs: int | None = None):
        """Samples of consumer k of n, from just after ``start`` (epoch, chunk, offset); endless
        unless ``epochs`` is given."""
        mine, row_split = assign(len(self.shards), k, n)
        epoch, chunk0, offset0 = start if start is not None else (0, 0, -1)
        partial = start is not None                   # the first epoch is resumed mid-way
        seed, size = self.cfg.seed, self.cfg.shuffle_shards
        stop = None if epochs is None else epoch + epochs
        while stop is None or epoch < stop:
            order = [mine[j] for j in _rng(seed, 1, k, epoch).permutation(len(mine))]
            chunks = [order[j:j + size] for j in range(0, len(order), size)]
            stats, produced = Counter(), 0
            for c in range(chunk0, len(chunks)):
                rows = self.load_chunk(chunks[c], k, n, row_split, stats)
                plans = self.plan_chunk(rows, _rng(seed, 2, k, epoch, c))
                for o in range(offset0 + 1, len(plans)):
                    produced += 1
                    yield self.realise(rows, plans[o], (k, epoch, c, o))
                offset0 = -1
            if not partial:
                log.info("consumer %d/%d epoch %d: %d samples from %d shards (%s split); rows: %s",
                         k, n, epoch, produced, len(mine), "row" if row_split else "shard", dict(stats))
                if produced == 0:
                    raise RuntimeError(
                        f"Data consumer {k} of {n} has no usable rows in {self.dataset!r} "
                        f"({len(self.shards)} shards; row filter counts {dict(stats)}). Use fewer "
                        "ranks/data.workers, relax data.filters / data.split, or add data.")
            chunk0, partial = 0, False
            epoch += 1


def make_loader(stream: ShardStream, micro_batch: int, *, pin_memory: bool = False,
                worker_init_fn=None) -> DataLoader:
    """Batches of ``micro_batch`` samples; with workers, each worker is one consumer (and runs
    ``worker_init_fn(worker_id)`` first)."""
    workers = stream.cfg.workers
    kw = dict(prefetch_factor=stream.cfg.prefetch, persistent_workers=True) if workers else {}
    return DataLoader(stream, batch_size=micro_batch, num_workers=workers, pin_memory=pin_memory,
                      drop_last=True, worker_init_fn=worker_init_fn, **kw)
