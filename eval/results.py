"""What an evaluation run writes, and where (plain functions; the Beam job calls
:func:`write_shard` per shard and :func:`write_summary` last).

Layout, one folder per run id (``OUTPUT/runs/<run_id>/``)::

    metrics.parquet/  one row per scored pair (METRICS_SCHEMA: scores + provenance), as shards
    rejects.parquet/  one row per pair that could not be scored (REJECTS_SCHEMA: reason, side, stage)
    frames.parquet/   per-frame PSNR / MS-SSIM / LPIPS / LMD of every scored pair (FRAMES_SCHEMA)
    summary.md        Table-1 layout, mean ± 95 % CI           (eval.report)
    summary.csv       the same numbers, one column per dataset × metric × (mean, ci95, n)
    report.html       self-contained report: counts, table, histograms, worst clips, sample crops
    summary.json      counts (inputs = scored + rejected + unpaired), rejects by reason, weights, config

Each table is a folder of shards ``part-NNNNN.parquet`` (``pyarrow.parquet.read_table(folder)``
reads it whole; :func:`read_table` too). A pair's rows go to shard ``hash(pair_id) mod S`` with
``S = ceil(pairs / ROWS_PER_SHARD)``, so no worker ever holds more than one shard's rows, and a
failed shard write is retried alone. The summary comes from a combiner
(:mod:`eval.aggregate`), never from the rows gathered in one place.

Idempotent per run id: every file is written whole to a temporary sibling and moved into place
(``preprocess.uri.write_bytes_atomic``); before any row, :func:`prepare_run_dir` removes an earlier
run of the same id (its ``summary.json`` first, then reports and shards), so re-running the same id
replaces the tables — never appends, never duplicates, and a rerun killed halfway leaves a folder
without ``summary.json``, which never claims to be complete. ``summary.json`` is written last. Rows within a shard are sorted
(dataset, method, key), so the same inputs give the same files.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import math
import posixpath
import re
import time

import fsspec

import pyarrow as pa
import pyarrow.parquet as pq

from preprocess import uri as uri_mod
from preprocess.errors import UserError
from preprocess.schema import read_parquet

SCHEMA_VERSION = "radio-eval/5"  # 5: identity check; 4: file fingerprints; 3: framing check, frame offset and resize columns (readers take 2 too)
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

_PAIR_FIELDS = [
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("pair_id", pa.string(), nullable=False),
    pa.field("key", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("method", pa.string(), nullable=False),
    pa.field("generated_uri", pa.string()),
    pa.field("reference_uri", pa.string()),
]

METRICS_SCHEMA = pa.schema(_PAIR_FIELDS + [
    pa.field("generated_fingerprint", pa.string()),   # JSON {size, tag}: which file was scored (eval.clip.file_fingerprint)
    pa.field("reference_fingerprint", pa.string()),
    pa.field("n_frames", pa.int32()),             # frames scored (reference face tracked)
    pa.field("n_frames_compared", pa.int32()),    # min(lengths), then max_frames
    pa.field("n_frames_generated", pa.int32()),
    pa.field("n_frames_reference", pa.int32()),
    pa.field("frames_truncated", pa.bool_()),
    pa.field("face_coverage", pa.float64()),
    pa.field("n_face_segments", pa.int32()),
    pa.field("psnr", pa.float64()),
    pa.field("ms_ssim", pa.float64()),
    pa.field("lpips", pa.float64()),              # null: disabled
    pa.field("lmd", pa.float64()),
    pa.field("sync_c", pa.float64()),             # null: disabled or missing (see sync_missing)
    pa.field("sync_d", pa.float64()),
    pa.field("sync_offset", pa.int32()),
    pa.field("sync_n_windows", pa.int32()),
    pa.field("sync_missing", pa.bool_()),         # null: disabled
    pa.field("sync_missing_reason", pa.string()),
    pa.field("sync_status", pa.string()),         # scored | too_short_for_sync | no_face_track | no_audio | audio_error | disabled
    pa.field("protocol", pa.string()),
    pa.field("protocol_version", pa.int32()),     # eval.crop.PROTOCOL_VERSIONS (dinet 2: DINet's inference crop)
    pa.field("crop_size", pa.int32()),            # radio-v1 side; dinet mouth_region_size
    pa.field("crop_height", pa.int32()),
    pa.field("crop_width", pa.int32()),
    pa.field("crop_flagged_frames", pa.int32()),  # radio-v1 padded / dinet out-of-frame or unstable
    pa.field("frame_height", pa.int32()),
    pa.field("frame_width", pa.int32()),
    pa.field("generated_resized", pa.bool_()),
    pa.field("generated_height", pa.int32()),     # the generated video's decoded (display) size
    pa.field("generated_width", pa.int32()),
    pa.field("resize_interpolation", pa.string()),  # null: same size; cv2.INTER_LINEAR (up) | cv2.INTER_AREA (down)
    pa.field("face_box_iou", pa.float64()),       # median IoU, generated face box vs reference's (framing check)
    pa.field("face_scale_ratio", pa.float64()),   # median generated / reference face size (sqrt area)
    pa.field("face_check_frames", pa.int32()),    # frames both faces were found on (0: not decided)
    pa.field("identity_distance", pa.float64()),  # median dlib face descriptor distance, generated vs reference face (null: not decided / off)
    pa.field("identity_flagged", pa.bool_()),     # identity_distance > identity_max_distance (identity_check=record; null: off)
    pa.field("identity_check_frames", pa.int32()),  # frames both faces' descriptors were measured on
    pa.field("identity_sha256", pa.string()),     # dlib_face_recognition_resnet_model_v1.dat (null: off)
    pa.field("best_offset", pa.int32()),          # generated frame t + k matches reference frame t best (-12..12)
    pa.field("offset_gain_db", pa.float64()),     # crop PSNR at best_offset minus at 0 (>= 0)
    pa.field("frame_offset_flagged", pa.bool_()),  # best_offset beat 0 by > frame_offset_db (frame_offset=record)
    pa.field("landmark_backend", pa.string()),
    pa.field("landmark_weights", pa.string()),    # JSON {file: sha256}
    pa.field("landmark_fitting", pa.string()),    # JSON {backend, fit_boxes, fit_shift, ...}: part of LMD's protocol
    pa.field("landmark_fit_boxes", pa.int32()),   # box fits averaged per landmark set
    pa.field("lmd_landmarks", pa.string()),
    pa.field("lpips_backbone_sha256", pa.string()),
    pa.field("lpips_linear_sha256", pa.string()),
    pa.field("lpips_official_weights", pa.bool_()),
    pa.field("lpips_label", pa.string()),
    pa.field("syncnet_sha256", pa.string()),
    pa.field("sync_official_weights", pa.bool_()),
    pa.field("sync_label", pa.string()),
    pa.field("sync_boxes", pa.string()),          # how Sync's face boxes were found (detector, settings)
    pa.field("sync_box_source", pa.string()),     # s3fd (as official) | <backend>_tracker (fallback)
    pa.field("sync_track_config", pa.string()),   # JSON TrackConfig
    pa.field("seconds", pa.float64()),
    pa.field("timings", pa.string()),             # JSON {stage: seconds}
])

REJECTS_SCHEMA = pa.schema(_PAIR_FIELDS + [
    pa.field("reason", pa.string(), nullable=False),  # eval.clip.REJECT_REASONS: missing_file | no_face | frame_offset | ...
    pa.field("side", pa.string(), nullable=False),    # generated | reference | pair
    pa.field("stage", pa.string(), nullable=False),
    pa.field("message", pa.string(), nullable=False),
])

FRAMES_SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("pair_id", pa.string(), nullable=False),
    pa.field("frame_index", pa.list_(pa.int32())),
    pa.field("psnr", pa.list_(pa.float32())),
    pa.field("ms_ssim", pa.list_(pa.float32())),
    pa.field("lpips", pa.list_(pa.float32())),
    pa.field("lmd", pa.list_(pa.float32())),
])


class RunIdError(UserError, ValueError):
    """A run id that cannot name a folder."""


def validate_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise RunIdError(f"Expected a run id of letters, digits, '.', '_' or '-' (at most 128, not starting "
                         f"with '.', '_' or '-'). Got {run_id!r}.")
    return run_id


def default_run_id(dataset: str, method: str, inputs: tuple = (), now: dt.datetime | None = None,
                   config_digest: str | None = None) -> str:
    """Today's UTC date, the table row and a short hash of the inputs (``--generated``,
    ``--reference``) and of the scoring config (``config_digest``, :func:`eval.config.scoring_digest`):
    ``YYYY-MM-DD_<dataset>_<method>_<hash6>``. A nightly job re-run the same day with the same
    config replaces that day's run; two generated folders scored into one output the same day are
    two runs, even when their folders share a name (``dubA/videos``, ``dubB/videos``) — with the
    date alone the second replaced the first —, and so are the same inputs scored with another
    protocol, ``max_frames`` or weight file (with the inputs alone the second deleted the first)."""
    def slug(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9.-]+", "-", str(name)).strip(".-")[:48] or "x"

    date = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%d")
    parts = [str(i) for i in inputs] + ([f"config:{config_digest}"] if config_digest else [])
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:6]
    return f"{date}_{slug(dataset)}_{slug(method)}_{digest}"


def run_dir(output: str, run_id: str) -> str:
    return uri_mod.join(output, "runs", validate_run_id(run_id))


def metrics_row(pair: dict, row: dict, run_id: str) -> dict:
    out = {"run_id": run_id, "pair_id": pair["pair_id"], "key": pair["key"], "dataset": pair["dataset"],
           "method": pair["method"], "generated_uri": pair["generated"], "reference_uri": pair["reference"]}
    out.update({f.name: row.get(f.name) for f in METRICS_SCHEMA if f.name not in out})
    return out


def reject_row(pair: dict, reason: str, side: str, stage: str, message: str, run_id: str) -> dict:
    return {"run_id": run_id, "pair_id": pair["pair_id"], "key": pair["key"], "dataset": pair["dataset"],
            "method": pair["method"], "generated_uri": pair["generated"], "reference_uri": pair["reference"],
            "reason": reason, "side": side, "stage": stage, "message": message[:2000]}


def frames_row(pair_id: str, frames: dict, run_id: str) -> dict:
    def lst(k):
        v = frames.get(k)
        return None if v is None else [float(x) for x in v]
    return {"run_id": run_id, "pair_id": pair_id, "frame_index": [int(i) for i in frames["frame_index"]],
            **{k: lst(k) for k in ("psnr", "ms_ssim", "lpips", "lmd")}}


def _sorted(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r.get("dataset", ""), r.get("method", ""), r.get("key", ""), r["pair_id"]))


def _parquet_bytes(rows: list[dict], schema: pa.Schema, meta: dict) -> bytes:
    schema = schema.with_metadata({b"radio_eval": json.dumps(meta, sort_keys=True).encode()})
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf, compression="zstd")
    return buf.getvalue()


# ------------------------------------------------------------------------------- shards
TABLES = {"metrics": METRICS_SCHEMA, "rejects": REJECTS_SCHEMA, "frames": FRAMES_SCHEMA}
#: pairs per shard: a frames shard of long clips stays a few hundred MB on the worker writing it
ROWS_PER_SHARD = 2000


def n_shards_for(n_pairs: int) -> int:
    """Shards per table for a run of ``n_pairs`` pairs (the same for every table)."""
    return max(1, math.ceil(int(n_pairs) / ROWS_PER_SHARD))


def shard_of(pair_id: str, n_shards: int) -> int:
    """The shard a pair's rows go to: a stable hash of its id."""
    return int(hashlib.sha1(pair_id.encode()).hexdigest()[:8], 16) % n_shards


def shard_uri(out_dir: str, table: str, index: int) -> str:
    return uri_mod.join(out_dir, f"{table}.parquet", f"part-{index:05d}.parquet")


def write_shard(out_dir: str, table: str, index: int, rows: list[dict], run_id: str, config: dict | None = None) -> str:
    """Write one shard of ``table`` (sorted rows) atomically; return its URI."""
    meta = {"schema_version": SCHEMA_VERSION, "run_id": run_id, "table": table, "shard": index}
    if config is not None and table == "metrics":
        meta["config"] = config
    uri = shard_uri(out_dir, table, index)
    uri_mod.write_bytes_atomic(uri, _parquet_bytes(_sorted(rows), TABLES[table], meta))
    return uri


#: what a finished run writes besides its tables; ``summary.json``, its completion marker, first
RUN_FILES = ("summary.json", "summary.md", "summary.csv", "report.html", "reference_spread.json",
             "reference_spread.csv")


def prepare_run_dir(out_dir: str) -> None:
    """Before a run of an id that may already exist, in place: first remove the completion marker
    ``summary.json`` (written last by :func:`write_summary`), so that from here until this run's
    last step the folder never looks complete — a rerun killed halfway leaves no summary claiming
    the earlier run next to the new rows; then the earlier run's reports and reference spread,
    every shard of its tables (a run with more shards left some this run would not overwrite),
    single-file tables (layout 1) and temporary files of killed writes. ``job.log`` is replaced
    by the new run. (In place rather than a staging folder swapped at the end: object stores have
    no folder rename, so a swap would itself be a many-file copy that a kill can interrupt.)"""
    fs, root = fsspec.core.url_to_fs(out_dir)
    if not fs.isdir(root):
        return
    for name in RUN_FILES:  # summary.json first
        path = posixpath.join(root, name)
        if fs.exists(path):
            uri_mod.remove_file(fs, path)
    for table in TABLES:
        path = posixpath.join(root, f"{table}.parquet")
        if not fs.exists(path):
            continue
        if not fs.isdir(path):
            uri_mod.remove_file(fs, path)
            continue
        for p in fs.ls(path, detail=False):
            if posixpath.basename(p).startswith(("part-", ".tmp-")):
                uri_mod.remove_file(fs, p)
    for p in fs.ls(root, detail=False):
        if posixpath.basename(p).startswith(".tmp-"):
            uri_mod.remove_file(fs, p)


class RunFilesLost(RuntimeError):
    """Shards this run wrote were removed before its summary (another writer of the run folder)."""


def finish_tables(out_dir: str, written: list[str], run_id: str) -> dict:
    """After every shard is written: an empty shard for a table that got no rows, and the
    removal of shards a previous run of this id left (a different shard count). Returns
    ``{table: folder URI}``. A written shard that is gone fails the run (never a summary that
    says "scored" over tables that lost their rows)."""
    written = set(written)
    lost = sorted(w for w in written if not uri_mod.exists(w))
    if lost:
        raise RunFilesLost(f"{len(lost)} table file(s) of run {run_id} were removed while it ran (first: {lost[0]}); "
                           f"was another run writing {out_dir}? Run the same command again.")
    out = {}
    for table in TABLES:
        folder = uri_mod.join(out_dir, f"{table}.parquet")
        if not any(w.startswith(folder + "/") for w in written):
            written.add(write_shard(out_dir, table, 0, [], run_id))
        fs, path = fsspec.core.url_to_fs(folder)
        for p in fs.ls(path, detail=False):
            name = posixpath.basename(p)
            if name.startswith("part-") and uri_mod.join(folder, name) not in written:
                uri_mod.remove_file(fs, p)
        out[table] = folder
    return out


def read_table(uri: str) -> list[dict]:
    """Rows of a table: a shard folder (``metrics.parquet/part-*.parquet``) or one Parquet file."""
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.isdir(path):
        parts = sorted(p for p in fs.ls(path, detail=False) if posixpath.basename(p).startswith("part-"))
        return [r for p in parts for r in read_table(uri_mod.join(uri, posixpath.basename(p)))]
    with uri_mod.local_copy(uri, ".parquet") as local:
        return read_parquet(local).to_pylist()


def summarise(rows: list[dict], rejects: list[dict], n_pairs: int, unpaired: list[dict] = ()) -> dict:
    """Counts of a run held in memory: inputs = scored + rejected + unpaired (by reason), per
    (dataset, method) too (:func:`eval.aggregate.summarise`, without the report samples);
    ``unpaired``: one ``{dataset, method}`` per unpaired reference."""
    from eval import aggregate

    out = aggregate.summarise(rows, rejects, n_pairs, unpaired)
    out.pop("_rows"), out.pop("_rejects")
    return out


def write_summary(out_dir: str, *, run_id: str, agg: dict, written: list[str], cards: dict, config: dict,
                  inputs: dict, started: float) -> dict:
    """The run's last step: complete the shard folders, write the reports and ``summary.json``
    (last). ``agg``: :func:`eval.aggregate.finish` of the run's accumulator."""
    from eval import report

    files = finish_tables(out_dir, written, run_id)
    rows, rejects = agg.pop("_rows"), agg.pop("_rejects")
    summary = {"schema_version": SCHEMA_VERSION, "run_id": run_id, **inputs, "output": out_dir, **agg,
               "config": config, "report_rows": len(rows),
               "report_rows_note": "" if len(rows) == agg["scored"] else
               f"histograms show a deterministic sample of {len(rows)} of {agg['scored']} clips; the table is exact"}
    summary["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    summary["wall_seconds"] = round(time.time() - started, 2)
    files.update(report.write_report(out_dir, rows, rejects, summary, cards))
    summary["files"] = files
    uri_mod.write_bytes_atomic(uri_mod.join(out_dir, "summary.json"),
                               json.dumps(_no_nan(summary), indent=2, sort_keys=True, default=str).encode())
    return summary


def _no_nan(x):
    """NaN (an empty or one-clip interval) as null: summary.json stays strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_no_nan(v) for v in x]
    return x
