"""Training samples streamed from the Parquet shards of ``radio preprocess`` (any fsspec URI).

A RADIO sample (``mode='radio'``) is one T-frame window of a segment (T=5):
    target    (T, 3, R, R) uint8   frames i-2..i+2, resized 192 -> R (``model.resolution``)
    reference (T, 3, R, R) uint8   one frame per target frame, drawn uniformly from the same
                                   segment (or from the speaker's segments in the same shuffle
                                   chunk, ``data.reference``), never from i-2..i+2 of the same
                                   source video, by source_uri and absolute frame, whatever the
                                   segment: a reference inside the window would show the answer,
                                   and G would learn to copy its mouth instead of listening to
                                   the audio (SPEC)
    mel       (T, 20, 80) float32  each frame's audio window, model range clip(1.6L+2.4, -4, 4)
A sync sample (``mode='sync'``, ``radio train-sync``) is frames (5, 3, R, R) uint8, the 20-row
audio window of frame ``j`` (20, 80) and ``label`` = 1 when j = i (in sync) or 0 when j is at least
``data.sync_min_offset`` frames away in the same segment (half the samples).
Both carry ``cursor`` = (consumer, epoch, chunk, offset) so the trainer can checkpoint the stream.

Shards and pieces: at start every shard's footer is checked (``preprocess.catalog``: in parallel,
cached per dataset listing); a shard with a bad footer, another schema version or a missing column
is skipped with a warning naming it, or stops the run before any step with ``data.strict``. The
good shards are cut into pieces (``catalog.pieces``): a small per-source shard is one piece, a
large compacted one (``radio compact``) one piece per ``data.piece_mib`` of row groups, so both layouts read
the same way.

Splits: ``data.split`` keeps rows of that split. Rows without a split count as training data when
no row of the dataset carries one (a corpus preprocessed from a glob); when some do, rows without
one are refused at start unless ``data.unsplit`` says what they are (a split name, or ``error``).

Splitting: the stream has ``n = world_size x max(1, num_workers)`` consumers; consumer
``k = rank x workers + worker_id``. With at least n pieces, piece ``p`` (in shard-name order) goes
to consumer ``p % n`` (piece-level split). With fewer pieces than consumers every consumer reads
every piece and keeps row ``r`` of piece ``p`` when ``(p + r) % n == k`` (row-level fallback: no
row is seen twice, but every consumer pays the reads). A consumer that ends up with no usable
row raises instead of hanging.

Shuffling and resume: each epoch, a consumer shuffles its pieces (seeded by data.seed, consumer,
epoch) and cuts them into chunks of ``data.shuffle_shards`` pieces; a chunk is loaded whole, its
samples (``samples_per_row`` windows per segment) are planned and fully shuffled with a generator
seeded by (seed, consumer, epoch, chunk), then decoded one by one. The shuffle buffer is thus the
chunk, and a cursor is enough to restart the exact stream: skip to its chunk, re-plan, continue.
While one chunk is consumed, a background thread loads the next (its pieces read in parallel,
``data.read_threads``), so at most two chunks are in memory and no batch waits for a chunk read;
the reads start in step with the consumer over the first 3/4 of the chunk, so their CPU (Parquet
decoding, HTTP) is spread out instead of slowing the batches at the start of every chunk.
"""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from preprocess import catalog, schema
from preprocess.audio import mel_windows, model_input
from preprocess.errors import UserError

from .config import DataConfig, FilterConfig

log = logging.getLogger("radio.train.data")

META_COLUMNS = ["clip_id", "source_uri", "start_frame", "speaker_id", "split", "n_frames", "det_score_min",
                "landmark_jitter", "crop_shake", "face_size", "outside_frac", "audio_rms_db", "n_faces"]
DATA_COLUMNS = ["frames", "mel", "mel_shape"]
_RULES = (  # (filter field, column, passes(value, threshold))
    ("det_score_min", "det_score_min", lambda v, t: v >= t),
    ("landmark_jitter_max", "landmark_jitter", lambda v, t: v <= t),
    ("crop_shake_max", "crop_shake", lambda v, t: v <= t),
    ("face_size_min", "face_size", lambda v, t: v >= t),
    ("outside_frac_max", "outside_frac", lambda v, t: v <= t),
    ("audio_db_min", "audio_rms_db", lambda v, t: v >= t),
    ("n_faces_max", "n_faces", lambda v, t: v <= t),
)
_NAMED = 20   # bad shards named in an error message (the log names every one)


class DataError(UserError, ValueError):
    """The dataset cannot be trained on as configured (bad shards with data.strict, rows without a
    split): found at start, before any step."""


def row_rejection(meta: dict, filters: FilterConfig, split: str | None, min_frames: int,
                  unsplit: str = "train") -> str | None:
    """Why a row (its metadata columns) is not used, or None when it passes every filter.
    ``unsplit``: the split of a row whose ``split`` is null."""
    row_split = meta.get("split") if meta.get("split") is not None else unsplit
    if split is not None and row_split != split:
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


def assign(n_pieces: int, k: int, n: int) -> tuple[list[int], bool]:
    """Pieces consumer k of n reads, and whether rows are split too (fewer pieces than consumers)."""
    if not 0 <= k < n:
        raise ValueError(f"Expected consumer 0 <= k < n. Got k={k}, n={n}.")
    if n_pieces >= n:
        return [s for s in range(n_pieces) if s % n == k], False
    return list(range(n_pieces)), True


class Frames:
    """The encoded frames of one row: zero-copy views into the loaded Arrow buffers (no Python
    object per frame, so loading a chunk in the background barely holds the GIL)."""
    __slots__ = ("data", "offsets")

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        self.data, self.offsets = data, offsets

    @classmethod
    def of_column(cls, column) -> list[Frames]:
        """One Frames per row of a ``list<binary>`` column (a pyarrow ChunkedArray)."""
        lists = column.combine_chunks()
        rows = lists.offsets.to_numpy()
        values = lists.values
        offsets = np.frombuffer(values.buffers()[1], np.int32)[values.offset:values.offset + len(values) + 1]
        data = np.frombuffer(values.buffers()[2], np.uint8)
        return [cls(data, offsets[rows[i]:rows[i + 1] + 1]) for i in range(len(lists))]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, f: int) -> np.ndarray:
        return self.data[self.offsets[f]:self.offsets[f + 1]]


@dataclass
class Row:
    """One usable segment of a loaded chunk (frames stay JPEG/PNG-encoded until a sample needs them)."""
    clip_id: str
    speaker: str | None
    frames: Frames
    mel: np.ndarray            # (4n, 80) raw log10 mel
    shard: int                 # piece index
    index: int                 # row within the piece
    source: str = ""           # source_uri: references near the target window in time are excluded
    start: int = 0             # start_frame: the segment's first frame in the source (25 fps)

    @property
    def n(self) -> int:
        return len(self.frames)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(x) for x in key])


def _share(rank: int, world: int):
    """``catalog.check``'s ``share`` for DDP: the ranks split the footers left to check and gather
    the results (each rank checks all of its own when their caches disagree)."""
    import torch.distributed as tdist

    if world <= 1 or not (tdist.is_available() and tdist.is_initialized()):
        return None

    def share(todo, run):
        key = hashlib.sha1(json.dumps(todo).encode()).hexdigest()
        keys = [None] * world
        tdist.all_gather_object(keys, key)
        if len(set(keys)) > 1:
            return run(todo)
        parts = [None] * world
        tdist.all_gather_object(parts, run(todo[rank::world]))
        return [i for part in parts for i in part]
    return share


class ShardStream(IterableDataset):
    """Endless, seeded sample stream over the shards of ``dataset`` (see the module docstring).

    ``resolution``: side R of the returned frames. ``rank``/``world``: this process's place in
    DDP. ``start``: {consumer: (epoch, chunk, offset)} of the last sample the trainer consumed;
    the stream continues right after it. ``worker_shift``: DataLoader worker w serves consumer slot
    ``(w + worker_shift) % workers`` (a resumed run starts with the slot whose turn it was).
    """

    def __init__(self, dataset: str, cfg: DataConfig, *, resolution: int, mode: str = "radio",
                 rank: int = 0, world: int = 1, start: dict[int, tuple[int, int, int]] | None = None,
                 worker_shift: int = 0):
        if mode not in ("radio", "sync"):
            raise ValueError(f"mode must be 'radio' or 'sync'. Got {mode!r}.")
        self.dataset, self.cfg, self.mode = dataset, cfg, mode
        self.resolution, self.rank, self.world = resolution, rank, world
        self.start, self.worker_shift = dict(start or {}), worker_shift
        infos = catalog.check(dataset, META_COLUMNS + DATA_COLUMNS, share=_share(rank, world))
        if not infos:
            raise FileNotFoundError(f"No row shards under {dataset!r} (expected rows/*.parquet "
                                    "written by `radio preprocess` or `radio compact`).")
        good = self._drop_bad(infos)
        self.shards = [i.uri for i in good]
        self.pieces = catalog.pieces(good, int(cfg.piece_mib * 2**20))
        self.listing = listing_id(good, self.pieces)
        self.unfed = self._unfed(good)          # None, or why a consumer would get no row at all
        self.unsplit = self._unsplit(good)      # the footers are not kept: 10^6 of them weigh GBs
        self.half = cfg.frames // 2
        extra = 1 if mode == "radio" else 0           # a reference outside the window must exist
        self.min_frames = max(cfg.filters.min_frames, cfg.frames + extra)

    # ---- start-up checks -----------------------------------------------------------------------
    def _drop_bad(self, infos: list[catalog.ShardInfo]) -> list[catalog.ShardInfo]:
        bad = [i for i in infos if i.error]
        good = [i for i in infos if not i.error]
        if not bad:
            return good
        if self.rank == 0 or self.cfg.strict:
            for i in bad:
                log.warning("bad shard %s: %s", i.uri, i.error)
        named = "; ".join(f"{i.uri}: {i.error}" for i in bad[:_NAMED])
        more = f"; and {len(bad) - _NAMED} more (all in the log)" if len(bad) > _NAMED else ""
        if self.cfg.strict:
            raise DataError(f"{len(bad)} of {len(infos)} shards of {self.dataset} fail their footer check "
                            f"(data.strict): {named}{more}")
        if not good:
            raise DataError(f"All {len(infos)} shards of {self.dataset} fail their footer check: {named}{more}")
        if self.rank == 0:
            log.warning("skipping %d of %d shards that fail their footer check (data.strict stops instead): %s%s",
                        len(bad), len(infos), named, more)
        return good

    def _unfed(self, good: list[catalog.ShardInfo]) -> str | None:
        """A consumer (rank x loader worker) that no row of the dataset is dealt to, before any filter:
        fewer pieces than consumers split rows, (piece + row) % consumers (``load_piece``), and fewer
        rows than consumers leave some with none. Found at start on every rank alike, instead of by
        that consumer alone at its first batch while the other ranks wait in the step's collectives."""
        workers = max(1, self.cfg.workers)
        n = self.world * workers
        if len(self.pieces) >= n:
            return None                         # each consumer reads whole pieces, at least one
        dealt: set[int] = set()
        for p, piece in enumerate(self.pieces):
            rows = sum(r for r, _ in good[piece.shard].groups[piece.first:piece.first + piece.count])
            dealt.update((p + r) % n for r in range(min(rows, n)))
        unfed = [k for k in range(n) if k not in dealt]
        if not unfed:
            return None
        total = sum(i.rows for i in good)
        return (f"Data consumer {unfed[0]} of {n} has no rows to read: {self.dataset!r} holds {total} row(s) in "
                f"{len(good)} shard(s) ({len(self.pieces)} pieces), dealt to {n} consumers ({self.world} ranks x "
                f"{workers} workers), {len(unfed)} of which get none. Use fewer ranks/data.workers, or add data.")

    def _unsplit(self, infos: list[catalog.ShardInfo]) -> str:
        """The split of rows without one (module docstring); raises when it is undecided."""
        cfg = self.cfg
        total = sum(i.rows for i in infos)
        split_rows = sum(i.split_rows if i.split_rows >= 0 else _count_split(i.uri) for i in infos)
        missing = total - split_rows
        if cfg.unsplit not in ("auto", "error"):
            return cfg.unsplit
        if missing == 0 or cfg.split is None:
            return "train"
        if cfg.unsplit == "auto" and split_rows == 0:
            return "train"                             # no split anywhere: a corpus from a glob
        example = next(i for i in infos if i.rows > (i.split_rows if i.split_rows >= 0 else _count_split(i.uri)))
        clip = _example_unsplit(example.uri)
        raise DataError(f"{missing} of {total} rows in {self.dataset} have no split while {split_rows} have one "
                        f"(e.g. clip {clip} in {example.uri}): set data.unsplit to the split they belong to "
                        "(e.g. train, or eval to keep them out of training).")

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
    def load_piece(self, p: int, k: int, n: int, row_split: bool, stats: Counter | None = None) -> list[Row]:
        """Read piece ``p`` and keep this consumer's rows that pass the filters."""
        piece = self.pieces[p]
        uri = self.shards[piece.shard]
        try:
            table = catalog.retried(lambda: catalog.read_piece(uri, piece, META_COLUMNS + DATA_COLUMNS),
                                    f"piece {piece} of shard {uri}")
        except (ValueError, OSError) as e:   # damaged past its footer (ArrowInvalid, corrupt pages)
            if isinstance(e, OSError) and not catalog.is_content_error(e):
                e.add_note(f"while reading shard {uri}")
                raise                          # storage/network: the trainer fails and is retried
            if self.cfg.strict:
                raise DataError(f"Unreadable shard {uri} (data.strict): {e}") from e
            log.warning("skipping unreadable piece %s of shard %s: %s", piece, uri, e)
            if stats is not None:
                stats["unreadable_pieces"] += 1
            return []
        metas = table.select(META_COLUMNS).to_pylist()
        keep = []
        for r, meta in enumerate(metas):
            if row_split and (p + r) % n != k:
                continue
            why = row_rejection(meta, self.cfg.filters, self.cfg.split, self.min_frames, self.unsplit)
            if stats is not None:
                stats[why or "kept"] += 1
            if why is None:
                keep.append(r)
        if not keep:
            return []
        data = table.select(DATA_COLUMNS).take(keep)
        rows = []
        for r, frames, mel, shape in zip(keep, Frames.of_column(data.column("frames")),
                                         data.column("mel").to_pylist(), data.column("mel_shape").to_pylist()):
            m = metas[r]
            mel = np.frombuffer(mel, np.float16).reshape(shape).astype(np.float32)
            if not np.isfinite(mel).all():   # NaN samples of a float WAV (preprocess before it refused them)
                log.warning("skipping row %s of shard %s: its mel holds inf/NaN", m["clip_id"], uri)
                if stats is not None:
                    stats["kept"] -= 1
                    stats["non_finite_mel"] += 1
                continue
            rows.append(Row(clip_id=m["clip_id"], speaker=m["speaker_id"], frames=frames, mel=mel,
                            shard=p, index=r, source=m["source_uri"], start=int(m["start_frame"])))
        return rows

    def load_chunk(self, piece_ids: list[int], k: int, n: int, row_split: bool,
                   stats: Counter | None = None, pool: ThreadPoolExecutor | None = None,
                   pace: _Pace | None = None) -> list[Row]:
        """The usable rows of ``piece_ids`` (read in parallel on ``pool``), in piece order. With
        ``pace``, piece j of n starts once the consumer has taken floor(j/n * ``_Pace.SPREAD``) of the
        samples of the chunk it is on: the reads' CPU is spread over it, with no burst at its start
        (two 4 MiB reads at once made a chunk's first batch the longest gap, 2.5x the median), and
        only a chunk shorter than the next one's pieces starts several reads per sample."""
        def load(p):
            counts = Counter()
            return self.load_piece(p, k, n, row_split, counts), counts

        if pool is None:
            parts = [load(p) for p in piece_ids]
        else:
            futures = []
            for j, p in enumerate(piece_ids):
                if pace is not None:
                    pace.wait(j, len(piece_ids))
                futures.append(pool.submit(load, p))
            parts = [f.result() for f in futures]
        for _, counts in parts:
            if stats is not None:
                stats.update(counts)
        return [row for part, _ in parts for row in part]

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
            if self.mode == "radio":
                refs = self._references(rows, pool, idx, centers, rng)
                plans += [(idx, i, r) for i, r in zip(centers.tolist(), refs)]
            else:
                plans += [(idx, i, *self._sync_audio(row.n, i, rng)) for i in centers.tolist()]
        order = rng.permutation(len(plans))
        return [plans[j] for j in order]

    def _references(self, rows, pool, idx, centers, rng) -> list[tuple]:
        """For each center i, T (row, frame) pairs, uniform over the pool's frames, never within
        frames i-h..i+h of the target's source video (same source_uri, absolute frame), whichever
        segment holds them. Drawn for all centers at once (planning runs beside the consumer)."""
        t, target = self.cfg.frames, rows[idx]
        cum = np.concatenate([[0], np.cumsum([rows[p].n for p in pool])])
        starts = np.array([rows[p].start for p in pool])
        same = np.array([rows[p].source == target.source for p in pool])
        u = rng.integers(cum[-1], size=(len(centers), 2 * t))       # oversampled: few are refused
        j = np.searchsorted(cum, u, side="right") - 1
        f = u - cum[j]
        near = same[j] & (np.abs(starts[j] + f - (target.start + centers[:, None])) <= self.half)
        out = []
        for c, i in enumerate(centers.tolist()):
            refs = [(pool[int(j[c, k])], int(f[c, k])) for k in np.flatnonzero(~near[c])[:t]]
            while len(refs) < t:                                      # rare: one more at a time
                uu = int(rng.integers(cum[-1]))
                jj = int(np.searchsorted(cum, uu, side="right")) - 1
                ff = uu - int(cum[jj])
                if not (same[jj] and abs(int(starts[jj]) + ff - target.start - i) <= self.half):
                    refs.append((pool[jj], ff))
            out.append(tuple(refs))
        return out

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
        return torch.from_numpy(np.stack([self._frame(r, f) for r, f in pairs])).permute(0, 3, 1, 2)   # collate copies

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
    def _chunks(self, mine: list[int], k: int, epoch: int, chunk0: int, stop: int | None):
        """(epoch, chunk, piece ids, last of its epoch) from ``chunk0`` of ``epoch`` on."""
        size = self.cfg.shuffle_shards
        while stop is None or epoch < stop:
            order = [mine[j] for j in _rng(self.cfg.seed, 1, k, epoch).permutation(len(mine))]
            chunks = [order[j:j + size] for j in range(0, len(order), size)]
            for c in range(chunk0, len(chunks)):
                yield epoch, c, chunks[c], c == len(chunks) - 1
            chunk0 = 0
            epoch += 1

    def iter_consumer(self, k: int, n: int, start: tuple[int, int, int] | None = None, *,
                      epochs: int | None = None):
        """Samples of consumer k of n, from just after ``start`` (epoch, chunk, offset); endless
        unless ``epochs`` is given. The next chunk loads in the background (module docstring)."""
        mine, row_split = assign(len(self.pieces), k, n)
        if not mine:
            raise RuntimeError(f"Data consumer {k} of {n}: the shards of {self.dataset!r} hold no rows.")
        epoch0, chunk0, offset0 = start if start is not None else (0, 0, -1)
        stop = None if epochs is None else epoch0 + epochs
        stats: dict[int, Counter] = {}
        produced: Counter = Counter()
        reader = ThreadPoolExecutor(max(1, self.cfg.read_threads), thread_name_prefix=f"radio-read-{k}")

        def load(key, pace):
            epoch, c, ids, _ = key
            rows = self.load_chunk(ids, k, n, row_split, stats.setdefault(epoch, Counter()), reader, pace)
            return rows, self.plan_chunk(rows, _rng(self.cfg.seed, 2, k, epoch, c))

        keys = self._chunks(mine, k, epoch0, chunk0, stop)
        pace = _Pace()
        _freeze_once()
        try:
            key = next(keys, None)
            pending = _background(load, key, None) if key is not None else None
            while key is not None:
                rows, plans = pending.result()
                nxt, pace = next(keys, None), _Pace(len(plans))
                pending = _background(load, nxt, pace) if nxt is not None else None
                epoch, c, _, last = key
                for o in range(offset0 + 1, len(plans)):
                    produced[epoch] += 1
                    pace.done = o
                    yield self.realise(rows, plans[o], (k, epoch, c, o))
                pace.release()
                offset0 = -1
                if last and not (start is not None and epoch == epoch0):   # a resumed epoch is partial
                    self._end_epoch(k, n, epoch, produced.pop(epoch, 0), len(mine), row_split,
                                    stats.pop(epoch, Counter()))
                key = nxt
        finally:
            pace.release()
            reader.shutdown(wait=False, cancel_futures=True)

    def _end_epoch(self, k: int, n: int, epoch: int, produced: int, pieces: int, row_split: bool,
                   stats: Counter) -> None:
        log.info("consumer %d/%d epoch %d: %d samples from %d pieces (%s split); rows: %s",
                 k, n, epoch, produced, pieces, "row" if row_split else "piece", dict(stats))
        if produced == 0:                  # the config's mistake (filters, split, ranks), found at step 1
            raise DataError(
                f"Data consumer {k} of {n} has no usable rows in {self.dataset!r} "
                f"({len(self.shards)} shards, {len(self.pieces)} pieces; row filter counts {dict(stats)}). "
                "Use fewer ranks/data.workers, relax data.filters / data.split, or add data.")


def _background(fn, *args) -> Future:
    """``fn(*args)`` on a daemon thread (a chunk load waiting on its pace never blocks exit)."""
    future: Future = Future()

    def run():
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001  (handed to the consumer by .result())
                future.set_exception(e)
    threading.Thread(target=run, name="radio-next-chunk", daemon=True).start()
    return future


_FROZEN = []


def _freeze_once() -> None:
    """Move what exists now (modules, models, this stream) out of the collector's reach, once per
    process: a full collection then skips it instead of stalling a batch for 0.1-0.4 s."""
    if not _FROZEN:
        gc.freeze()
        _FROZEN.append(True)


class _Pace:
    """How many samples the consumer has taken of its current chunk (``total``); the next chunk's
    piece reads wait for it (``load_chunk``), all of them started by ``SPREAD`` of the way through."""
    SPREAD = 0.75

    def __init__(self, total: int = 0):
        self.total = total
        self.done = 0

    def wait(self, j: int, n: int) -> None:
        need = math.floor(j * self.SPREAD * self.total / n)
        while self.done < need:
            time.sleep(0.002)

    def release(self) -> None:
        self.done = math.inf


def _count_split(uri: str) -> int:
    """Rows of a shard whose split is set, read from the column (a shard without statistics)."""
    from preprocess import shards

    return int(shards.read_shard(uri, ["split"]).column("split").drop_null().__len__())


def _example_unsplit(uri: str) -> str:
    from preprocess import shards

    rows = shards.read_shard(uri, ["clip_id", "split"]).to_pylist()
    return next((r["clip_id"] for r in rows if r["split"] is None), "?")


def listing_id(good: list[catalog.ShardInfo], pieces: list[catalog.Piece]) -> str:
    """What a data cursor (epoch, chunk, offset) is a position in: the good shards (file name, size,
    rows per row group) and how they are cut into pieces. A dataset copied elsewhere keeps its id; a
    shard added, removed or rewritten, or another ``data.piece_mib``, changes it."""
    h = hashlib.sha256()
    for info in good:
        h.update(f"{info.uri.rsplit('/', 1)[-1]}\t{info.size}\t{[r for r, _ in info.groups]}\n".encode())
    for p in pieces:
        h.update(f"{p.shard},{p.first},{p.count};".encode())
    return h.hexdigest()[:16]


@contextmanager
def closing_loader(batches):
    """Stop a DataLoader iterator's worker processes when the block ends, however it ends. The
    workers ignore SIGTERM (their rank decides when to stop), so an iterator left for interpreter exit
    (a training error's traceback keeps it alive) made multiprocessing's exit handler wait on them
    forever: the job printed its error and never exited."""
    try:
        yield batches
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)    # torch's multi-process iterator
        if shutdown is not None:
            shutdown()


def make_loader(stream: ShardStream, micro_batch: int, *, pin_memory: bool = False,
                worker_init_fn=None) -> DataLoader:
    """Batches of ``micro_batch`` samples; with workers, each worker is one consumer (and runs
    ``worker_init_fn(worker_id)`` first)."""
    workers = stream.cfg.workers
    kw = dict(prefetch_factor=stream.cfg.prefetch, persistent_workers=True,
              multiprocessing_context=stream.cfg.start_method) if workers else {}
    return DataLoader(stream, batch_size=micro_batch, num_workers=workers, pin_memory=pin_memory,
                      drop_last=True, worker_init_fn=worker_init_fn, **kw)
