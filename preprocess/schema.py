"""The Parquet contract of radio datasets (SPEC "Dataset format").

One row per clip segment (a continuous face track of at most N seconds). Arrays are stored as
Arrow lists (frames as encoded images, landmarks/affines as per-frame fixed-size float32 lists,
mel as float16 bytes with its shape), so any Parquet reader can open a shard and
``decode_segment`` turns a row back into numpy arrays. Rejects share one small schema.

Bump ``SCHEMA_VERSION`` on any incompatible change; readers check it in the file metadata.
Nullable columns added later (``ADDED_COLUMNS``) are a compatible change, not a new version:
shards written before them lack them, and readers take a missing one as null (``conform``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

SCHEMA_VERSION = "radio-dataset/1"
N_LANDMARKS = 68

SEGMENT_SCHEMA = pa.schema([
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("source_id", pa.string(), nullable=False),
    pa.field("speaker_id", pa.string()),
    pa.field("split", pa.string()),
    pa.field("segment_index", pa.int32(), nullable=False),
    pa.field("segment_start_s", pa.float64(), nullable=False),
    pa.field("start_frame", pa.int32(), nullable=False),
    pa.field("fps", pa.float32(), nullable=False),
    pa.field("n_frames", pa.int32(), nullable=False),
    pa.field("crop_size", pa.int32(), nullable=False),
    pa.field("source_width", pa.int32()),
    pa.field("source_height", pa.int32()),
    pa.field("frame_format", pa.string(), nullable=False),          # 'jpeg' | 'png'
    pa.field("frames", pa.list_(pa.binary()), nullable=False),       # encoded RGB crops
    pa.field("landmarks", pa.list_(pa.list_(pa.float32(), N_LANDMARKS * 2)), nullable=False),  # crop px
    pa.field("affine", pa.list_(pa.list_(pa.float32(), 6)), nullable=False),  # source -> crop, 2x3
    pa.field("detector_score", pa.list_(pa.float32()), nullable=False),
    pa.field("mel", pa.binary(), nullable=False),                    # float16, row-major
    pa.field("mel_shape", pa.list_(pa.int32(), 2), nullable=False),  # (4 * n_frames, 80)
    # quality metadata: filter on these when training
    pa.field("det_score_min", pa.float32()),
    pa.field("det_score_mean", pa.float32()),
    pa.field("landmark_jitter", pa.float32()),       # mean frame-to-frame eye motion in crop px
    pa.field("crop_shake", pa.float32()),            # SPEC crop-shake figure (output px/frame^2)
    pa.field("face_size", pa.float32()),             # median crop side in source px
    pa.field("outside_frac", pa.float32()),          # mean fraction of the crop outside the frame
    # added within radio-dataset/1 (ADDED_COLUMNS): null in shards written before them
    pa.field("audio_rms_db", pa.float32()),          # RMS level of the segment's 16 kHz mono sound, dBFS (floor -100)
    pa.field("source_audio_rate", pa.int32()),       # the source's audio sample rate (Hz), before resampling
    pa.field("n_faces", pa.int32()),                 # faces of >= quality.other_face_ratio x the tracked one's size
])

#: nullable columns added after radio-dataset/1 first shipped, in order: older shards lack them
ADDED_COLUMNS = ("audio_rms_db", "source_audio_rate", "n_faces")

REJECT_SCHEMA = pa.schema([
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("source_id", pa.string(), nullable=False),
    pa.field("segment_index", pa.int32()),           # null: the whole source
    pa.field("stage", pa.string(), nullable=False),  # probe | decode | audio | faces | align | write
    pa.field("reason", pa.string(), nullable=False),  # short slug, e.g. no_face, no_audio_stream
    pa.field("error_type", pa.string(), nullable=False),
    pa.field("message", pa.string(), nullable=False),
])


def source_id(source_uri: str, frames: tuple[int, int | None] | None = None) -> str:
    """Stable id of a source: first 16 hex of sha1 of its URI, or for a clip range of it (a
    manifest line with ``start_s``/``end_s``) of its URI and the range's 25 fps frames ``(first,
    stop)`` (``stop`` None: to the video's end). Hashing the snapped frames, not the seconds as
    written, gives ``2.4`` and ``2.40`` one id; a line without a range keeps the URI-only id."""
    key = source_uri if frames is None else f"{source_uri}#frames={int(frames[0])}:" + (
        "" if frames[1] is None else str(int(frames[1])))
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


def clip_id(source_uri: str, start_frame: int) -> str:
    """Stable id of a segment: hash of the source URI and its start (in 25 fps frames)."""
    return hashlib.sha1(f"{source_uri}#{int(start_frame)}".encode("utf-8")).hexdigest()[:20]


def conform(table: pa.Table, columns: list[str] | None = None) -> pa.Table:
    """A row table of any radio-dataset/1 shard as ``SEGMENT_SCHEMA`` (its columns, in order), or as
    just ``columns`` in their order: the ``ADDED_COLUMNS`` an older shard lacks become nulls. Other
    missing columns raise KeyError.

    Rows of anamorphic sources written before square-pixel decoding record the stored size in
    ``source_width``/``source_height``; newer ones the displayed size (their affines' space)."""
    names = list(columns) if columns is not None else SEGMENT_SCHEMA.names
    n = table.num_rows
    cols = [table.column(c) if c in table.column_names or c not in ADDED_COLUMNS
            else pa.nulls(n, SEGMENT_SCHEMA.field(c).type) for c in names]
    if columns is not None:
        return pa.Table.from_arrays(cols, names=names)
    return pa.Table.from_arrays(cols, schema=SEGMENT_SCHEMA.with_metadata(table.schema.metadata))


def parquet_file(source):
    """pyarrow's plain reader (``pq.ParquetFile``) of a Parquet file: a path, a file object, or its
    bytes, which are copied into Arrow's memory first. Never ``pq.read_table``, never Arrow holding a
    Python bytes object: Arrow's threads may drop the last reference to what they read after the call
    has returned, and one dropping a Python object while the interpreter exits takes the GIL, is ended
    by Python inside a destructor, and the process aborts ("terminate called without an active
    exception"). ``pq.read_table`` of a shard's bytes did so in 14 of 40 read-and-exit runs
    (pyarrow 25), and in a DataLoader worker at shutdown."""
    import pyarrow.parquet as pq

    if isinstance(source, (bytes, bytearray)):
        buf = pa.allocate_buffer(len(source))
        memoryview(buf).cast("B")[:] = source
        source = pa.BufferReader(buf)
    return pq.ParquetFile(source)


def read_parquet(source, columns: list[str] | None = None) -> pa.Table:
    """A whole Parquet file as a Table (``parquet_file``)."""
    return parquet_file(source).read(columns=columns)


def file_metadata(extra: dict[str, Any] | None = None) -> dict[bytes, bytes]:
    """Key/value metadata written into every shard's footer."""
    from preprocess.audio import MEL_PARAMS  # local import: schema stays importable alone

    meta = {"schema_version": SCHEMA_VERSION, "mel_params": MEL_PARAMS}
    meta.update(extra or {})
    return {b"radio": json.dumps(meta, sort_keys=True).encode()}


def read_file_metadata(schema: pa.Schema) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(b"radio")
    if raw is None:
        raise ValueError("Expected a radio dataset shard (no 'radio' key in the Parquet metadata).")
    meta = json.loads(raw)
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"Expected schema {SCHEMA_VERSION}. Got {meta.get('schema_version')}.")
    return meta


def encode_image(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 95) -> bytes:
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    if fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif fmt == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        raise ValueError(f"Expected frame format 'jpeg' or 'png'. Got {fmt!r}.")
    if not ok:
        raise RuntimeError("image encoding failed")
    return buf.tobytes()


def decode_image(data: bytes) -> np.ndarray:
    """Encoded JPEG/PNG bytes -> (H, W, 3) uint8 RGB."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("undecodable image bytes")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass
class Segment:
    """A segment in memory, before encoding. Shapes: frames (T,S,S,3) uint8, landmarks (T,68,2)
    crop px, affine (T,2,3) source->crop, detector_score (T,), mel (4T, 80) raw log10 mel."""
    source_uri: str
    segment_index: int
    start_frame: int
    frames: np.ndarray
    landmarks: np.ndarray
    affine: np.ndarray
    detector_score: np.ndarray
    mel: np.ndarray
    fps: float = 25.0
    speaker_id: str | None = None
    split: str | None = None
    source_width: int | None = None
    source_height: int | None = None
    source_audio_rate: int | None = None
    n_faces: int | None = None
    quality: dict[str, float] = field(default_factory=dict)
    source_id: str | None = None   # a clip range's id (``source_id(uri, frames)``); None: the URI's


def segment_to_row(seg: Segment, fmt: str = "jpeg", quality: int = 95) -> dict[str, Any]:
    t = len(seg.frames)
    if not (len(seg.landmarks) == len(seg.affine) == len(seg.detector_score) == t):
        raise ValueError(f"Expected per-frame arrays of length {t}. Got landmarks "
                         f"{len(seg.landmarks)}, affine {len(seg.affine)}, score {len(seg.detector_score)}.")
    if seg.mel.shape != (4 * t, 80):
        raise ValueError(f"Expected mel of shape {(4 * t, 80)}. Got {seg.mel.shape}.")
    mel16 = np.ascontiguousarray(seg.mel, dtype=np.float16)
    row = {
        "clip_id": clip_id(seg.source_uri, seg.start_frame),
        "source_uri": seg.source_uri,
        "source_id": seg.source_id or source_id(seg.source_uri),
        "speaker_id": seg.speaker_id,
        "split": seg.split,
        "segment_index": int(seg.segment_index),
        "segment_start_s": float(seg.start_frame) / float(seg.fps),
        "start_frame": int(seg.start_frame),
        "fps": float(seg.fps),
        "n_frames": int(t),
        "crop_size": int(seg.frames.shape[1]),
        "source_width": seg.source_width,
        "source_height": seg.source_height,
        "frame_format": fmt,
        "frames": [encode_image(f, fmt, quality) for f in seg.frames],
        "landmarks": np.asarray(seg.landmarks, np.float32).reshape(t, -1).tolist(),
        "affine": np.asarray(seg.affine, np.float32).reshape(t, 6).tolist(),
        "detector_score": np.asarray(seg.detector_score, np.float32).tolist(),
        "mel": mel16.tobytes(),
        "mel_shape": list(mel16.shape),
    }
    for k in QUALITY_COLUMNS:
        v = seg.quality.get(k)
        row[k] = None if v is None else float(v)
    row["source_audio_rate"] = None if seg.source_audio_rate is None else int(seg.source_audio_rate)
    row["n_faces"] = None if seg.n_faces is None else int(seg.n_faces)
    return row


#: the float quality columns ``Segment.quality`` fills
QUALITY_COLUMNS = ("det_score_min", "det_score_mean", "landmark_jitter", "crop_shake", "face_size", "outside_frac",
                   "audio_rms_db")


def decode_segment(row: dict[str, Any], frames: bool = True) -> dict[str, Any]:
    """A row back to numpy arrays: a dict from ``table.to_pylist()`` or a pandas row (whose nested
    lists arrive as object arrays of arrays)."""
    t = int(row["n_frames"])
    out = dict(row)

    def per_frame(v, shape):
        return np.stack([np.asarray(x, np.float32) for x in v]).reshape(t, *shape)

    out["landmarks"] = per_frame(row["landmarks"], (N_LANDMARKS, 2))
    out["affine"] = per_frame(row["affine"], (2, 3))
    out["detector_score"] = np.asarray(row["detector_score"], np.float32)
    out["mel"] = np.frombuffer(row["mel"], np.float16).reshape(tuple(int(x) for x in row["mel_shape"])).astype(np.float32)
    if frames:
        out["frames"] = np.stack([decode_image(b) for b in row["frames"]])
    return out


@dataclass
class Reject:
    source_uri: str
    stage: str
    reason: str
    error_type: str
    message: str
    segment_index: int | None = None
    source_id: str | None = None   # a clip range's id; None: the URI's

    def to_row(self) -> dict[str, Any]:
        return {"source_uri": self.source_uri, "source_id": self.source_id or source_id(self.source_uri),
                "segment_index": self.segment_index, "stage": self.stage, "reason": self.reason,
                "error_type": self.error_type, "message": self.message[:2000]}
