"""One source video -> its dataset files. The per-clip work of ``radio preprocess``, no Beam.

    probe -> audio + mel -> decode (25 fps, chunks) -> track main face -> align (streaming)
          -> segments -> rows/<source_id>.parquet, rejects/<source_id>.parquet, done/<source_id>.json

Every content failure becomes a typed reject record with the stage it happened in; the caller (a
Beam DoFn, a test, a script) gets one result dict per source whose counts add up. An environment
failure (no space, I/O, network, out of memory: ``preprocess.failures``) is no reject: it
propagates, with no done marker written, so the caller retries the source.
"""
from __future__ import annotations

import json
import logging
import time
import traceback
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np

from preprocess import align, catalog, failures, progress, schema, shards
from preprocess import uri as uri_mod
from preprocess.assemble import AlignedSegment, RegionCache, align_segment
from preprocess.config import check_choice, check_min
from preprocess.writer import AtomicParquetWriter

log = logging.getLogger(__name__)


@dataclass
class DecodeConfig:
    fps: int = 25               # frames per second every source is decoded at (CFR); fixed: 4 mel rows a frame
    chunk: int = 64              # frames per decoded chunk (memory: chunk × H × W × 3 bytes) ...
    chunk_mib: int = 16          # ... and at most this many MiB of frames per chunk (512²: 21, 1080p: 2);
    #                              under glibc's 32 MiB mmap threshold, chunk buffers are reused, not page-faulted anew
    # auto (PyAV in-process, the ffmpeg pipe when PyAV fails) | pyav | ffmpeg | decord. Not decord
    # by default: decord 0.6 decodes ahead of its reader without bound (4 GiB held after 40 s of
    # 1080p, dmlc/decord#208); PyAV and the pipe hold one chunk
    backend: str = "auto"
    min_side: int = 64           # smaller videos are rejected at probe (no usable face)

    def __post_init__(self):
        from preprocess.video import BACKENDS

        if self.fps != 25 or isinstance(self.fps, bool):   # mel rows are 10 ms: 4 per frame at 25 fps (SPEC)
            raise ValueError(f"fps: expected 25 (4 mel rows of 10 ms per frame, as the model and the mel "
                             f"windows assume). Got {self.fps!r}.")
        check_min(self, chunk=1, chunk_mib=1, min_side=1)
        check_choice(self, backend=BACKENDS)


@dataclass
class LimitsConfig:
    """What one source may declare before it is refused (a reject, never a worker's memory).

    Checked at probe from the headers, and for gaps from the packet timestamps, before anything
    is decoded; decoded audio goes to a temporary file and each segment's mel is computed from
    its own samples, so memory does not grow with duration."""
    max_pixels: int = 4096 * 2304     # per frame (4K UHD and DCI 4K pass; 8000×8000 does not)
    max_duration_s: float = 7200.0    # video (or audio) stream duration
    max_gap_s: float = 10.0           # a timestamp gap (within a stream, or between the streams' starts)
    max_source_bytes: int = 16 * 2**30  # size of the source file, checked before it is copied

    def __post_init__(self):
        check_min(self, max_pixels=1, max_duration_s=0.0, max_gap_s=0.0, max_source_bytes=1)


@dataclass
class InputConfig:
    """Where sources may come from: URI schemes ('file' = local paths); http/https only when listed."""
    schemes: list[str] = field(default_factory=lambda: ["file", "gs", "memory"])

    def __post_init__(self):
        if not isinstance(self.schemes, list) or not self.schemes or not all(
                isinstance(x, str) and x for x in self.schemes):
            raise ValueError(f"input.schemes: expected a non-empty list of URI schemes (file = local paths). "
                             f"Got {self.schemes!r}.")
        self.schemes = [x.lower() for x in self.schemes]


@dataclass
class FacesConfig:
    backend: str = "dlib"        # dlib (offline default) | face_alignment
    backend_args: dict = field(default_factory=dict)  # weight URIs + sha256, see preprocess.landmarks
    tracker: dict = field(default_factory=dict)       # preprocess.track.TrackerConfig fields


@dataclass
class AlignConfig:
    crop_size: int = align.CROP_SIZE  # side of the aligned face crop in pixels
    smooth_window: int = 5       # frames; centred moving average of the FFHQ quad

    def __post_init__(self):
        check_min(self, crop_size=32, smooth_window=1)


@dataclass
class OutputConfig:
    frame_format: str = "jpeg"   # jpeg | png
    jpeg_quality: int = 95       # JPEG quality of stored frames (frame_format jpeg)
    min_segment_frames: int = 25  # shorter face tracks become segment rejects

    def __post_init__(self):
        check_choice(self, frame_format=("jpeg", "png"))
        check_min(self, jpeg_quality=1, min_segment_frames=1)
        if self.jpeg_quality > 100:
            raise ValueError(f"jpeg_quality: expected 1..100. Got {self.jpeg_quality}.")


@dataclass
class QualityConfig:
    """What a face segment must be to become a row; one that is not becomes a segment reject with
    its reason (counted in the run summary), never a row of wrong data."""
    # segments whose sound (RMS of the segment's 16 kHz mono samples, dBFS) is below this are
    # rejects silent_audio (digital silence is -100; room tone ~ -60 to -50, speech ~ -30 to -15);
    # null keeps them all (the level is the row's audio_rms_db either way)
    min_audio_db: Optional[float] = -60.0
    # a frame with more than this fraction of the face (cheeks to chin in the aligned crop) outside
    # the picture, or an eye or mouth landmark outside it, ends the segment as a lost face does (the
    # crop would show replicated edge pixels); null keeps such frames
    max_face_outside: Optional[float] = 0.25
    # reject | keep: a segment whose picture holds another face of at least other_face_ratio × the
    # tracked face's size (the row's n_faces > 1) is a reject multiple_faces: the largest face is
    # tracked, whoever speaks, so its lips may not match the sound. keep: such rows stay, with n_faces
    multiple_faces: str = "reject"
    other_face_ratio: float = 0.5    # faces this size × the tracked one's or larger are counted in n_faces

    def __post_init__(self):
        check_choice(self, multiple_faces=("reject", "keep"))
        if not 0 < self.other_face_ratio <= 1:
            raise ValueError(f"other_face_ratio: expected a number in (0, 1]. Got {self.other_face_ratio!r}.")
        if self.max_face_outside is not None and not 0 <= self.max_face_outside <= 1:
            raise ValueError(f"max_face_outside: expected a fraction in [0, 1] or null. Got {self.max_face_outside!r}.")


@dataclass
class WorkerConfig:
    """How sources are run (never what they give: not part of the dataset's fingerprint)."""
    attempts: int = 3            # tries per source on environment failures (no space, I/O, network, killed)
    backoff_s: float = 5.0       # wait before the 2nd try; doubles per try (at most 60 s)
    isolate: bool = True         # run sources in a child process holding the landmark backend, so
    #                              one killed by the kernel (OOM) is retried instead of ending the job
    stall_s: float = 900.0       # with isolate: a child with no progress (frames decoded, bytes copied,
    #                              a stage begun) for this long is killed and the source retried; 0 = never

    def __post_init__(self):
        check_min(self, attempts=1, backoff_s=0.0, stall_s=0.0)


@dataclass
class PreprocessConfig:
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    input: InputConfig = field(default_factory=InputConfig)
    faces: FacesConfig = field(default_factory=FacesConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)


def range_of(item: dict) -> Optional[tuple[int, Optional[int]]]:
    """A manifest line's clip range as 25 fps frames ``(first, stop)`` (``stop`` None: to the end),
    None for the whole video (``sources.frame_range``)."""
    from preprocess.sources import frame_range

    return frame_range(item.get("start_s"), item.get("end_s"))


def source_id_of(item: dict) -> str:
    """The id of a listed item: its URI's, or for a clip range its URI's and range's."""
    return schema.source_id(item["uri"], range_of(item))


def load_backend(cfg: PreprocessConfig):
    """The landmark backend, built once per worker (its models load here)."""
    from preprocess.landmarks import get_backend

    return get_backend(cfg.faces.backend, **cfg.faces.backend_args)


def warm_up() -> None:
    """Build the mel basis and window once per worker, and import PyAV (~50 ms together),
    so that the first source's stage times (and the per-stage counters) measure the work, not
    the imports."""
    import av  # noqa: F401  (probe, audio and decode run in-process through it)

    from preprocess import audio

    audio.log_mel(np.zeros(audio.SAMPLE_RATE // 10, np.float32))


class _Stages:
    """Wall time per stage, and the stage a failure happened in."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.current = "probe"

    @contextmanager
    def __call__(self, name: str):
        prev, self.current = self.current, name
        progress.beat()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        self.current = prev  # only on success: a failure keeps the stage it happened in


def _timed_iter(it: Iterator, stages: _Stages, name: str) -> Iterator:
    while True:
        with stages(name):
            try:
                x = next(it)
            except StopIteration:
                return
        yield x


def segment_quality(seg: AlignedSegment, size: int) -> dict[str, float]:
    aff = seg.affines
    scale = np.sqrt(np.abs(np.linalg.det(aff[:, :, :2].astype(np.float64))))
    return {
        "det_score_min": float(np.min(seg.scores)),
        "det_score_mean": float(np.mean(seg.scores)),
        "landmark_jitter": align.eye_jitter(seg.landmarks),
        "crop_shake": align.crop_shake(aff, size),
        "face_size": float(np.median(size / scale)),
        "outside_frac": float(np.mean(seg.outside)),
    }


def audio_db(track, start: int, n: int, fps: int) -> float:
    """RMS level in dBFS (floor -100) of the sound of frames ``[start, start + n)``: ``track``'s
    samples over those frames' times (``audio.AudioTrack``, 16 kHz mono)."""
    from preprocess.audio import SAMPLE_RATE

    x = track.read(start * SAMPLE_RATE // fps, (start + n) * SAMPLE_RATE // fps).astype(np.float64)
    rms = float(np.sqrt(np.mean(x * x))) if len(x) else 0.0
    return float(20.0 * np.log10(max(rms, 1e-5)))


def audio_frames(info, n_samples: int, fps: int) -> tuple[int, int]:
    """``[first, stop)``: the video frames (at ``fps``, 0 = the first video frame) that have sound.

    The decoded track's sample 0 is the first video frame's time (``audio.load_audio``): audio that
    starts later is preceded there by silence, audio that ends earlier leaves the last frames
    without any. Frame i has sound when all of [i/fps, (i+1)/fps) lies within the audio stream:
    ``first`` = ceil(lead·fps) for audio starting ``lead`` s after the video (1 ms of timestamp
    rounding forgiven), ``stop`` = the whole frames the track covers."""
    from preprocess.audio import SAMPLE_RATE

    lead = info.audio_start_s - info.video_start_s if info.has_video else 0.0
    first = int(np.ceil((lead - 1e-3) * fps)) if lead > 1e-3 else 0
    return first, int(n_samples * fps // SAMPLE_RATE)



def segment_mel(track, start: int, n: int) -> np.ndarray:
    """Rows [4·start, 4·(start+n)) of the source's mel (``track``: an ``audio.AudioTrack``),
    computed from the segment's own samples and edge-padded past the track's end."""
    from preprocess.audio import align_mel_to_frames

    rows = track.mel_rows(4 * start, 4 * (start + n))
    if len(rows) == 0:
        last = len(track) // 160
        rows = track.mel_rows(last, last + 1)
    return align_mel_to_frames(rows, n)


def aligned_segments(path: str, info, cfg: PreprocessConfig, backend, stages: _Stages,
                     first: int = 0, stop: Optional[int] = None) -> Iterator[AlignedSegment]:
    """Decode at 25 fps in chunks, track the main face, and yield aligned segments as they end.

    Only the face regions of frames in open tracks are kept (``RegionCache``), so memory stays
    flat in video length whatever the resolution. ``first``/``stop``: only the frames
    ``[first, stop)`` of the whole decode (a clip range; ``video.iter_frames``), tracked from a fresh
    start at ``first``; segments' ``start`` are indexes in the whole video either way.
    """
    import dataclasses

    from preprocess import track, video

    # every track comes out: short ones become segment rejects here
    tracker = track.FaceTracker(backend, track.tracker_config(cfg.faces.tracker, where="faces.tracker",
                                                              min_segment_frames=1,
                                                              other_face_ratio=cfg.quality.other_face_ratio))
    cache = RegionCache(cfg.align.crop_size)
    hw = video.output_size(info)  # square pixels: an anamorphic source is decoded as displayed
    frame_bytes = max(1, hw[0] * hw[1] * 3)
    n_chunk = max(1, min(cfg.decode.chunk, cfg.decode.chunk_mib * 2**20 // frame_bytes))
    chunks = _timed_iter(video.iter_frames(path, info=info, fps=cfg.decode.fps, chunk=n_chunk,
                                           backend=cfg.decode.backend, first=first, stop=stop), stages, "decode")
    for seg in _aligned(chunks, tracker, cache, cfg, stages, hw):
        yield seg if not first else dataclasses.replace(seg, start=seg.start + first)


def _aligned(chunks, tracker, cache, cfg: PreprocessConfig, stages: _Stages, hw) -> Iterator[AlignedSegment]:
    """``aligned_segments``' loop; frame indexes count from the first decoded frame."""
    t0 = 0
    for chunk in chunks:
        with stages("track"):
            done = tracker.update(chunk)
        with stages("align"):
            marks = {}
            for seg in done:
                marks.update({seg.start + i: lm for i, lm in enumerate(seg.landmarks)})
            open_start, open_marks = tracker.open_landmarks()
            marks.update({open_start + i: lm for i, lm in enumerate(open_marks)})
            for i, frame in enumerate(chunk):
                if t0 + i in marks:
                    cache.add(t0 + i, frame, marks[t0 + i])
            t0 += len(chunk)
            progress.frames(len(chunk))
            hw = chunk.shape[1:3]
            out = [align_segment(seg.start, seg.landmarks, seg.scores, cache, hw, cfg.align.crop_size,
                                 cfg.align.smooth_window, seg.n_faces) for seg in done]
            cache.drop_before(open_start if len(open_marks) else t0)
        yield from out
    with stages("track"):
        done = tracker.finish()
    with stages("align"):
        out = [align_segment(seg.start, seg.landmarks, seg.scores, cache, hw, cfg.align.crop_size,
                             cfg.align.smooth_window, seg.n_faces) for seg in done]
    yield from out


def segment_parts(whole: AlignedSegment, sound: tuple[int, int], cfg: PreprocessConfig):
    """The parts of one aligned face track that may become rows, in order, each with why it is
    refused (a reject's (stage, reason, error type, message)) or None.

    A track shorter than ``output.min_segment_frames`` is refused whole. Only its frames with sound
    (``sound``: [first, stop) video frames, ``audio_frames``) are kept. Where the face is out of
    the picture (more than ``quality.max_face_outside`` of its FACE_BOX, or an eye or mouth
    landmark, outside the frame: a crop of replicated edge pixels) the segment ends, as at a lost
    face: those frames are dropped (a run of them long enough for a segment is a reject
    ``face_outside_frame``), and the runs of frames in the picture on either side long enough for a
    segment are parts of their own; shorter runs, in or out, are dropped (a face at the threshold
    flickers across it), and a segment of nothing but such runs is one reject ``face_outside_frame``."""
    least = cfg.output.min_segment_frames
    if len(whole) < least:
        yield whole, ("faces", "segment_too_short", "SegmentTooShort",
                      f"face track at frame {whole.start}: {len(whole)} frames (< {least})")
        return
    a = min(len(whole), max(0, sound[0] - whole.start))
    seg = whole.part(a, max(a, min(len(whole), sound[1] - whole.start)))
    if len(seg) < least:
        yield seg, ("audio", "no_audio", "AudioTooShort",
                    f"segment at frame {whole.start}: {len(seg)} of its {len(whole)} frames have audio (< {least}; "
                    f"sound in frames {sound[0]}..{sound[1] - 1})")
        return
    limit = cfg.quality.max_face_outside
    out = np.zeros(len(seg), bool) if limit is None else (seg.face_outside > limit) | seg.features_outside
    if not out.any():
        yield seg, None
        return
    edges = np.flatnonzero(np.diff(out.astype(np.int8))) + 1
    parts = [seg.part(i, j) for i, j in zip([0, *edges], [*edges, len(seg)])]
    runs = [(p, bool(out[p.start - seg.start])) for p in parts if len(p) >= least]  # shorter: dropped
    for part, outside in runs:
        yield part, (("faces", "face_outside_frame", "FaceOutsideFrame",
                      f"frames {part.start}..{part.start + len(part) - 1}: up to "
                      f"{float(part.face_outside.max()):.0%} of the face outside the picture "
                      f"(> quality.max_face_outside {limit:g}) or an eye/mouth point outside it") if outside else None)
    if not runs:  # all in short runs in and out of the picture: no row, and one reject saying why
        yield seg, ("faces", "face_outside_frame", "FaceOutsideFrame",
                    f"segment at frame {seg.start}: the face was outside the picture in {int(out.sum())} of its "
                    f"{len(seg)} frames (> quality.max_face_outside {limit:g}), leaving no {least} frames in it")


def run_source(item: dict, cfg: PreprocessConfig, backend, dataset: str) -> dict[str, Any]:
    """Process one source; write its rows, rejects and done marker; return its counts.

    Never raises for a bad input: every content failure is a reject record. An environment
    failure raises (``preprocess.failures.is_environment_error``), leaving no temporary behind
    and no done marker. The done marker is written last, and records the size and sha256 of each
    file written and the config's fingerprint, so ``--resume`` can check them.
    """
    from preprocess import audio, media, video

    src = item["uri"]
    rng = range_of(item)
    sid = source_id_of(item)
    stages = _Stages()
    rejects: list[schema.Reject] = []
    prefix = shards.temp_prefix(dataset)
    writer = AtomicParquetWriter(shards.rows_uri(dataset, sid), schema.SEGMENT_SCHEMA,
                                 schema.file_metadata({"source_uri": src}), temp_prefix=prefix)
    n_segments = n_frames = seg_index = 0
    first, stop = 0, None   # the frames to do: a clip range's, or the whole video
    made_from = None        # which file the source was (``catalog.fingerprint``): --resume redoes it when replaced
    try:
        lim = cfg.limits
        with uri_mod.local_copy(src, max_bytes=lim.max_source_bytes, schemes=cfg.input.schemes) as path, \
                ExitStack() as stack:
            made_from = catalog.fingerprint(src)
            with stages("probe"):
                info = media.validate(media.probe(path), need_video=True, need_audio=True,
                                      min_side=cfg.decode.min_side)
                # a clip range's length is checked against max_duration_s below, not the file's: a 3 h
                # video listed as ranges is processable; the checks protecting the worker all run
                media.check_limits(info, max_pixels=lim.max_pixels,
                                   max_duration_s=None if rng else lim.max_duration_s, max_gap_s=lim.max_gap_s)
                media.check_gaps(path, info, lim.max_gap_s)
                total = video.frame_count(info, cfg.decode.fps)
                if rng:
                    first, stop = clip_frames(rng, total, cfg.decode.fps, lim.max_duration_s, path)
                progress.expect((total if stop is None else stop) - first)
            with stages("audio"):  # to a temporary file: each segment's mel is computed from its samples
                window = None if not rng else audio.frames_window(first, stop, cfg.decode.fps)
                track = stack.enter_context(audio.decode_audio(path, info=info, max_seconds=info.duration_s + 1.0,
                                                               window=window))
                sound_from, sound_to = audio_frames(info, len(track), cfg.decode.fps)
            # the frames' size: the display size in square pixels (affines are in these pixels)
            height, width = video.output_size(info)
            for whole in aligned_segments(path, info, cfg, backend, stages, first, stop):
                for seg, refused in segment_parts(whole, (sound_from, sound_to), cfg):
                    n = len(seg)
                    level = None if refused else audio_db(track, seg.start, n, cfg.decode.fps)
                    floor = cfg.quality.min_audio_db
                    if not refused and floor is not None and level < floor:
                        refused = ("audio", "silent_audio", "SilentAudio",
                                   f"segment at frame {seg.start}: its sound is {level:.1f} dBFS "
                                   f"(< quality.min_audio_db {floor:g})")
                    if not refused and seg.n_faces > 1 and cfg.quality.multiple_faces == "reject":
                        refused = ("faces", "multiple_faces", "MultipleFaces",
                                   f"segment at frame {seg.start}: {seg.n_faces} faces of at least "
                                   f"{cfg.quality.other_face_ratio:g} x the tracked one's size in the picture; "
                                   "the largest is tracked whoever speaks (quality.multiple_faces=keep keeps them)")
                    if refused:
                        rejects.append(schema.Reject(src, *refused, segment_index=seg_index, source_id=sid))
                        seg_index += 1
                        continue
                    with stages("encode"):
                        s = schema.Segment(
                            source_uri=src, segment_index=seg_index, start_frame=seg.start,
                            frames=seg.crops, landmarks=seg.landmarks, affine=seg.affines,
                            detector_score=seg.scores, mel=segment_mel(track, seg.start, n),
                            fps=float(cfg.decode.fps), speaker_id=item.get("speaker_id"), split=item.get("split"),
                            source_width=width, source_height=height, source_audio_rate=info.audio_rate,
                            n_faces=seg.n_faces, source_id=sid,
                            quality={**segment_quality(seg, cfg.align.crop_size), "audio_rms_db": level})
                        writer.write_rows([schema.segment_to_row(s, cfg.output.frame_format, cfg.output.jpeg_quality)])
                    seg_index += 1
                    n_segments += 1
                    n_frames += n
            if n_segments == 0 and not rejects:
                rejects.append(schema.Reject(src, "faces", "no_face", "NoFace",
                                             "no face track found in any frame", source_id=sid))
    except Exception as e:  # the per-source boundary: a content failure becomes a reject record
        from preprocess.media import MediaError

        writer.abort()
        if failures.is_environment_error(e):
            log.warning("environment failure on %s in %s: %s", src, stages.current, failures.describe(e))
            raise
        if isinstance(e, MediaError):
            rejects.append(schema.Reject(src, e.stage, e.reason, type(e).__name__, str(e), source_id=sid))
        else:
            log.exception("internal error on %s", src)
            tb = traceback.format_exception_only(type(e), e)[-1].strip()
            rejects.append(schema.Reject(src, stages.current, "internal_error", type(e).__name__, tb, source_id=sid))
        n_segments = n_frames = 0
        writer = None
    status = "rows" if n_segments else "rejected"
    if status == "rejected" and not any(r.segment_index is None for r in rejects):
        reasons = sorted({r.reason for r in rejects})
        rejects.append(schema.Reject(src, "faces", "no_usable_segment", "NoUsableSegment",
                                     f"no segment became a row (segment rejects: {', '.join(reasons)})", source_id=sid))
    files = []
    try:
        with stages("write"):
            # a re-run replaces what an earlier run of this source wrote, never leaves a stale file
            if not rejects:
                uri_mod.remove_if_exists(shards.rejects_uri(dataset, sid))
            if not n_segments:
                uri_mod.remove_if_exists(shards.rows_uri(dataset, sid))
            if rejects:
                rw = AtomicParquetWriter(shards.rejects_uri(dataset, sid), schema.REJECT_SCHEMA,
                                         schema.file_metadata({"kind": "rejects"}), temp_prefix=prefix)
                rw.write_rows([r.to_row() for r in rejects])
                rw.commit()
                files.append(shards.file_record(shards.REJECTS, sid, rw.size, rw.sha256, len(rejects)))
            if writer is not None:
                if n_segments:
                    writer.commit()
                    files.append(shards.file_record(shards.ROWS, sid, writer.size, writer.sha256, writer.n_rows))
                else:
                    writer.abort()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    result = {
        "source_uri": src, "source_id": sid, "status": status, "segments": n_segments, "frames": n_frames,
        "segment_rejects": sum(r.segment_index is not None for r in rejects),
        "reject_reasons": [r.reason for r in rejects],
        "seconds": {k: round(v, 4) for k, v in stages.seconds.items()},
    }
    if rng:   # which frames of the video this id stands for (stop_frame: clamped to the video once probed)
        result["range"] = {"start_s": item.get("start_s"), "end_s": item.get("end_s"), "first_frame": rng[0],
                           "stop_frame": stop if stop is not None else rng[1]}
    marker = {**result, "files": files, "config_fingerprint": shards.config_fingerprint(_config_dict(cfg)),
              "labels": labels_of(item), "input": made_from}
    uri_mod.write_bytes_atomic(shards.done_uri(dataset, sid), json.dumps(marker, sort_keys=True).encode())
    return result


def clip_frames(rng: tuple[int, Optional[int]], total: int, fps: int, max_duration_s: float,
                path: str) -> tuple[int, int]:
    """A clip range's frames ``[first, stop)`` in a video of ``total`` frames: one that ends past the
    video ends with it; one that starts past it is a reject ``range_past_end``, one longer than
    ``limits.max_duration_s`` a reject ``too_long``."""
    from preprocess.media import MediaError

    first, stop = rng
    if first >= total:
        raise MediaError("probe", "range_past_end",
                         f"the clip range starts at frame {first} ({first / fps:g} s) but the video has "
                         f"{total} frames ({total / fps:g} s at {fps} fps): nothing of it exists", path)
    stop = total if stop is None else min(stop, total)
    if (stop - first) / fps > max_duration_s:
        raise MediaError("probe", "too_long", f"Expected a clip range of at most {max_duration_s:g} s. Got "
                         f"{(stop - first) / fps:.1f} s (frames {first}..{stop - 1}).", path)
    return first, stop


def labels_of(item: dict) -> dict:
    """The manifest columns a source's rows carry (``speaker_id``, ``split``): recorded in its done
    marker, so ``--resume`` redoes a source whose labels changed instead of keeping rows that say
    ``train`` for a clip the manifest now puts in ``eval``."""
    return {"speaker_id": item.get("speaker_id"), "split": item.get("split")}


def _config_dict(cfg: PreprocessConfig) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)
