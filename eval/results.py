"""What an evaluation run writes, and where (plain functions; the Beam job calls :func:`write_run`).

Layout, one folder per run id (``OUTPUT/runs/<run_id>/``)::

    metrics.parquet   one row per scored pair (METRICS_SCHEMA: scores + provenance)
    rejects.parquet   one row per pair that could not be scored (REJECTS_SCHEMA: reason, side, stage)
    frames.parquet    per-frame PSNR / MS-SSIM / LPIPS / LMD of every scored pair (FRAMES_SCHEMA)
    summary.md        Table-1 layout, mean ± 95 % CI           (eval.report)
    summary.csv       the same numbers, one column per dataset × metric × (mean, ci95, n)
    report.html       self-contained report: counts, table, histograms, worst clips, sample crops
    summary.json      counts (inputs = scored + rejected), rejects by reason, weights, config

Idempotent per run id: every file is written whole to a temporary sibling and moved into place
(``preprocess.uri.write_bytes_atomic``), and each holds all of the run's pairs, so re-running the
same id replaces the files — never appends, never duplicates. ``summary.json`` is written last.
Rows are sorted (dataset, method, key), so the same inputs give the same files.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import re
import time

import pyarrow as pa
import pyarrow.parquet as pq

from preprocess import uri as uri_mod
from preprocess.errors import UserError

SCHEMA_VERSION = "radio-eval/2"
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
    pa.field("reason", pa.string(), nullable=False),  # missing_file | length_mismatch | no_face | undecodable
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


def default_run_id(now: dt.datetime | None = None) -> str:
    """Today's UTC date, ``YYYY-MM-DD``: a nightly job re-run the same day replaces that day's run."""
    return (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%d")


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
    return sorted(rows, key=lambda r: (r["dataset"], r["method"], r["key"], r["pair_id"]))


def _parquet_bytes(rows: list[dict], schema: pa.Schema, meta: dict) -> bytes:
    schema = schema.with_metadata({b"radio_eval": json.dumps(meta, sort_keys=True).encode()})
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf, compression="zstd")
    return buf.getvalue()


def read_table(uri: str) -> list[dict]:
    with uri_mod.local_copy(uri, ".parquet") as local:
        return pq.read_table(local).to_pylist()


def summarise(rows: list[dict], rejects: list[dict], n_pairs: int) -> dict:
    """Counts of a run: inputs = scored + rejected (by reason), per (dataset, method) too."""
    by_reason: dict[str, int] = {}
    groups: dict[tuple[str, str], dict] = {}
    for r in rejects:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    for kind, items in (("scored", rows), ("rejected", rejects)):
        for r in items:
            g = groups.setdefault((r["dataset"], r["method"]), {"dataset": r["dataset"], "method": r["method"],
                                                                "scored": 0, "rejected": 0, "sync_missing": 0})
            g[kind] += 1
            if kind == "scored" and r.get("sync_missing"):
                g["sync_missing"] += 1
    return {
        "inputs": int(n_pairs), "scored": len(rows), "rejected": len(rejects),
        "counts_add_up": int(n_pairs) == len(rows) + len(rejects),
        "rejects_by_reason": dict(sorted(by_reason.items())),
        "sync_missing": sum(1 for r in rows if r.get("sync_missing")),
        "frames_scored": int(sum(r.get("n_frames") or 0 for r in rows)),
        "groups": [groups[k] for k in sorted(groups)],
        "weights": _weights(rows),
    }


def _weights(rows: list[dict]) -> dict:
    keys = ("landmark_backend", "landmark_weights", "lpips_label", "lpips_backbone_sha256", "lpips_linear_sha256",
            "lpips_official_weights", "sync_label", "syncnet_sha256", "sync_official_weights", "sync_boxes")
    return {k: sorted({str(r.get(k)) for r in rows if r.get(k) is not None}) for k in keys}


def write_run(out_dir: str, *, run_id: str, rows: list[dict], rejects: list[dict], frames: list[dict],
              cards: dict, n_pairs: int, config: dict, inputs: dict, started: float) -> dict:
    """Write every file of a run (module docstring) atomically; return the summary."""
    from eval import report

    rows, rejects = _sorted(rows), _sorted(rejects)
    frames = sorted(frames, key=lambda r: r["pair_id"])
    meta = {"schema_version": SCHEMA_VERSION, "run_id": run_id}
    files = {"metrics": uri_mod.join(out_dir, "metrics.parquet"), "rejects": uri_mod.join(out_dir, "rejects.parquet"),
             "frames": uri_mod.join(out_dir, "frames.parquet")}
    uri_mod.write_bytes_atomic(files["metrics"], _parquet_bytes(rows, METRICS_SCHEMA, {**meta, "config": config}))
    uri_mod.write_bytes_atomic(files["rejects"], _parquet_bytes(rejects, REJECTS_SCHEMA, meta))
    uri_mod.write_bytes_atomic(files["frames"], _parquet_bytes(frames, FRAMES_SCHEMA, meta))
    summary = {"schema_version": SCHEMA_VERSION, "run_id": run_id, **inputs, "output": out_dir,
               **summarise(rows, rejects, n_pairs), "config": config}
    summary["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    summary["wall_seconds"] = round(time.time() - started, 2)
    files.update(report.write_report(out_dir, rows, rejects, summary, cards))
    summary["files"] = files
    uri_mod.write_bytes_atomic(uri_mod.join(out_dir, "summary.json"),
                               json.dumps(summary, indent=2, sort_keys=True, default=str).encode())
    return summary
