"""Score one (generated, reference) video pair: plain functions, no Beam.

:func:`evaluate_pair` is the whole per-pair job; ``pipelines.evaluate`` only wires it.

1. **Lengths.** Both files are probed and their 25 fps frame counts compared: a difference above
   ``cfg.length_tolerance`` frames is a ``length_mismatch`` reject; within it, both are cut to
   the shorter (``frames_truncated`` records it), then to ``cfg.max_frames`` if set.
2. **Decode** both at 25 fps CFR (``preprocess.video``), in step, ``cfg.chunk_frames`` at a time,
   twice (two passes; see Memory). A generated video of another frame size but the same aspect
   ratio (within ``cfg.aspect_tolerance``, relative) is resized to the reference's
   (``generated_resized``), as :mod:`eval.crop` requires, frame by frame with OpenCV: bilinear
   (``cv2.INTER_LINEAR``) when it is smaller, area averaging (``cv2.INTER_AREA``) when larger;
   rows record ``resize_interpolation`` and the generated size (``generated_height/width``);
   another aspect ratio is an ``aspect_mismatch`` reject (at probe), never a stretched face.
3. **Reference faces** (pass 1). ``preprocess.track.FaceTracker`` with the configured landmark
   backend runs over the reference (no segment length cap, no minimum). Frames outside a face
   segment are not scored (``face_coverage``); coverage under ``cfg.min_face_coverage`` (or no
   face at all) is a ``no_face`` reject.
   **Framing** (:class:`FramingCheck`, pass 1): on ``cfg.face_check_frames`` frames spread over
   the pair, both frames (the generated one resized as it is scored) are searched for faces alike
   and fitted, and the rigid landmarks (nose, eyes: a dub moves the mouth, not these) give how far
   the generated face moved and how much larger it is. When measured on at least half of the
   frames checked and, median over them, the reference's face box moved so overlaps itself by IoU
   < ``cfg.face_min_iou`` (0.6: a shift of a quarter of the face) or the size differs by more than
   ``cfg.face_max_scale`` (1.15×, either way), the pair is a ``content_mismatch`` reject: a face
   crop scored against a full frame (a 192² crop upscaled to a 512² frame: PSNR 15 in the method's
   mean; a 1.4× zoom of a 224² clip: PSNR 13.6) or a shifted picture measures the framing, not the
   method. Re-encodes, downscaled copies and a blurred mouth measured IoU ≥ 0.97, scale within
   1 % (tests/test_evaluate_integrity.py). Rows record ``face_box_iou``, ``face_scale_ratio``
   (generated / reference) and ``face_check_frames`` (frames measured); a generated video whose
   face is not found is scored (a method's broken face is its score, not a reject).
   **Identity** (``cfg.identity_check``, :mod:`eval.metrics.identity`), on the same frames: dlib's
   face recognition ResNet gives a 128-d descriptor of each face from the landmarks the framing
   check fitted (no extra detection or fit); ``identity_distance`` is the median Euclidean
   distance over the frames both faces were found on (None when not decided, as framing: under
   half of the checked frames, or the check off). Above ``cfg.identity_max_distance`` (0.6, dlib's
   own same-person threshold) the generated face is another person's (a mispaired file: 00086
   against 00015 measured 0.72; the same clip re-encoded at crf 35 0.22, its mouth region
   replaced by another frame's 0.25):
   with ``record`` (the default) the pair is scored and flagged (``identity_flagged``, counted
   and named in the reports), with ``reject`` it is an ``identity_mismatch`` reject.
4. **Crops** per face segment with ``cfg.protocol`` (:func:`eval.crop.plan_crop` from the whole
   segment's landmarks, then :func:`eval.crop.cut` block by block: the same box for both videos),
   then per frame PSNR, MS-SSIM, LPIPS (when enabled). Rows record ``protocol_version``.
   **Pairing in time**: generated frame *i* is scored against reference frame *i*, both from
   frame 0 of their 25 fps streams, the longer one's tail cut (step 1). Whether that is the right
   pairing is measured (:class:`OffsetProbe`): on :data:`OFFSET_FRAMES` frames spread over the
   face segments, the PSNR of the crop of reference frame *t* against generated frames *t + k*,
   k = −12…+12 (:data:`OFFSET_REACH`, less when the pair is too short; each cut with frame *t*'s
   box). ``best_offset`` (the k of the highest mean PSNR; 0
   on ties) and ``offset_gain_db`` (its PSNR minus that at 0) are in every row. When a k ≠ 0
   beats 0 by more than ``cfg.frame_offset_db`` (3 dB), the generated video is shifted in time (a
   generated video missing its first frame: k = −1, PSNR 50 dB there against 28 as paired) and
   its scores would measure the shift, not the method: with ``cfg.frame_offset`` ``reject`` (the
   default) the pair is a ``frame_offset`` reject, with ``record`` it is scored as paired and
   counted (``frame_offset_flagged``, summary and report notes).
5. **LMD landmarks.** Both videos are fitted by the same backend on their *full frames* from the
   same box per frame — the reference track's box, in the detector's convention — and mapped into
   crop pixels with the crop's affine (:func:`eval.crop.landmarks_to_crop`). Same fitter, same box:
   identical frames give LMD 0 exactly, and no tracker state (box prediction from the previous
   frame) favours one side. The tracker's own landmarks only place the crop. The fitting is part
   of the protocol: ``landmark_fitting`` (JSON: backend, ``fit_boxes``, their parameters) and
   ``landmark_fit_boxes`` are in every row. Default: dlib with 5 box fits averaged
   (``fit_shift`` 0.03); with one fit LMD roughly doubles at mild distortion.
6. **Sync-C/D** (when enabled) on the generated full-frame video (before any resize) and its own
   audio. Boxes (pass 1): with S3FD weights configured (``sync.s3fd_uri``, or the face_alignment
   backend's ``sfd_uri``), S3FD on every frame as syncnet_python's pipeline
   (:mod:`eval.metrics.s3fd`), ``sync_box_source`` = ``s3fd``; otherwise the fallback, a second
   tracker pass with the landmark backend (dlib's HOG box is tighter than S3FD's, so SyncNet sees
   a more zoomed face; ``sync.box_scale`` can grow them), ``sync_box_source`` = ``dlib_tracker``.
   Then the official tracking rules (:func:`eval.metrics.face_track.shot_tracks`) and, pass 2,
   crops and SyncNet embeddings streamed (:class:`eval.metrics.sync.SyncStream`).
   ``sync_status``: ``scored``, ``too_short_for_sync`` (every track had ``min_track`` = 100
   frames or fewer, dropped as officially), ``no_face_track``, ``no_audio``, ``audio_error`` or
   ``disabled``; when not scored, ``sync_missing`` with a reason (the pair is still scored).

A clip score that comes out NaN or ±inf (a degenerate landmark fit, a broken network) makes the
pair a ``scoring_error`` reject naming the metric and its non-finite frames: counted as scored,
it would be left out of that metric's mean (:mod:`eval.aggregate`).

Every data problem raises :class:`PairReject` with a reason from :data:`REJECT_REASONS`;
anything else propagates to the caller, whose per-pair boundary (:func:`failure_reject`) turns it
into a ``scoring_error`` reject unless it is an environment failure (``OSError``,
``MemoryError``), which propagates so the runner retries the pair.

Memory: bounded by the block size, not the length. Each pass holds about two blocks of
``cfg.chunk_frames`` frames per video (4 frames of 1080p ≈ 25 MB per block) plus, per frame,
landmarks (68 × 2 floats ×2 for LMD's fits, transient), one box, a few per-frame scores and, for
Sync, one row of 31 distances (SyncNet embeddings are kept only for the last 15 + 20 windows):
under 1 KB per frame, ≈ 10 MB for 10 min at 25 fps. Each file is decoded twice (one pass to
track, one to score); the scores are the same as with the whole pair in one block (a test).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from typing import Iterator

import cv2
import numpy as np

from eval import crop as crop_mod
from eval.aggregate import nonfinite
from eval.config import EvalConfig
from eval.metrics import lmd as lmd_mod
from eval.metrics import msssim, psnr
from preprocess import progress
from preprocess import uri as uri_mod
from preprocess.landmarks.base import box_iou
from preprocess.track import rigid_frame
from preprocess.media import MediaError

log = logging.getLogger(__name__)

FPS = 25
SAMPLES_PER_FRAME = 16000 // FPS
REJECT_REASONS = ("missing_file", "length_mismatch", "aspect_mismatch", "no_face", "content_mismatch", "frame_offset",
                  "undecodable", "unsupported_scheme", "too_large", "scoring_error", "input_changed",
                  "unsupported_name", "identity_mismatch")
#: frame offsets tried (generated frame t + k against reference frame t) and frames sampled for it
#: 12 frames (0.48 s) either way: a method that drops or adds a few frames at its start (window
#: padding, a late first output) was scored silently as paired beyond ±2 (3 frames late: reported as
#: 2; 5 frames: PSNR 25 instead of 44, no flag), and SyncNet itself searches ±15
OFFSET_REACH = 12
OFFSET_FRAMES = 8
#: failures of the machine, not of the pair: never a reject, the runner retries the element
ENVIRONMENT_ERRORS = (OSError, MemoryError)
NO_CAP = 10 ** 9  # tracker segment cap: one segment per continuous track
#: frames per pytorch_msssim call. Measured on one CPU core at 256² (NCHW input): 26 ms/frame at 1,
#: 50 at 4, 80 at 32 (five float maps per frame leave the cache as the batch grows); results are
#: the same. With the channels-last input msssim now passes (same core, real 256² crops in
#: bench/evaluate.py): 9.4 at 1, 7.8 at 2 and 4, 15 at 8 (the cache cliff); per-frame scores are
#: bit-identical across these batch sizes. 2 keeps well below the cliff.
MS_SSIM_BATCH = 2
LMD_LANDMARKS = "backend fit on full frames from the reference track's box (both videos), mapped to crop px"


class PairReject(Exception):
    """A pair that cannot be scored: ``reason`` (one of :data:`REJECT_REASONS`), which file
    (``side``: 'generated' | 'reference' | 'pair'), the ``stage`` that refused it, and a message."""

    def __init__(self, reason: str, message: str, side: str = "pair", stage: str = "evaluate"):
        if reason not in REJECT_REASONS:
            raise ValueError(f"Expected reason in {REJECT_REASONS}. Got {reason!r}.")
        self.reason, self.message, self.side, self.stage = reason, message, side, stage
        super().__init__(reason, message, side, stage)

    def __str__(self) -> str:
        return f"{self.reason} ({self.side}, {self.stage}): {self.message}"

    def __reduce__(self):
        return (type(self), (self.reason, self.message, self.side, self.stage))


def failure_reject(e: Exception) -> PairReject | None:
    """The per-pair boundary's verdict on an unexpected exception: ``None`` for an environment
    failure (re-raise it: retried, the run ends non-zero), else a ``scoring_error`` reject
    naming the exception, so one bad pair of a million does not end the run. ``radio evaluate``
    exits 1 when there is any."""
    if isinstance(e, ENVIRONMENT_ERRORS):
        return None
    return PairReject("scoring_error", f"{type(e).__name__}: {e}", "pair", "evaluate")


def _media_reject(e: MediaError, side: str) -> PairReject:
    reason = {"not_found": "missing_file", "unsupported_scheme": "unsupported_scheme",
              "too_large": "too_large", "unsupported_name": "unsupported_name"}.get(e.reason, "undecodable")
    return PairReject(reason, f"{e.stage}/{e.reason}: {e.message}", side, e.stage)


class _Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


# ------------------------------------------------------------------------------- media
def iter_decoded(path: str, info, n: int, side: str, chunk: int) -> Iterator[np.ndarray]:
    """The first ``n`` 25 fps frames of a local file, as (k, H, W, 3) uint8 RGB blocks, k ≤ ``chunk``."""
    from preprocess import video

    got = 0
    try:
        gen = video.iter_frames(path, info=info, fps=FPS, chunk=chunk)
        try:
            for block in gen:
                block = block[: n - got]
                got += len(block)
                if len(block):
                    yield block
                if got >= n:
                    break
        finally:
            gen.close()
    except MediaError as e:
        raise _media_reject(e, side) from e
    if got == 0:
        raise PairReject("undecodable", "no frames decoded", side, "decode")


def iter_pair(gen_local: str, gen_info, ref_local: str, ref_info, n: int, chunk: int):
    """Both videos in step: ``(start, gen_block, ref_block)`` with equal lengths ≤ ``chunk``,
    until the shorter one ends (at most ``n`` frames). Blocks are views of the decoders' blocks
    (never concatenated): about one block per video is alive, plus the one being decoded."""
    its = [iter_decoded(gen_local, gen_info, n, "generated", chunk),
           iter_decoded(ref_local, ref_info, n, "reference", chunk)]
    heads: list = [None, None]
    start = 0
    while True:
        for k in range(2):
            if heads[k] is None or not len(heads[k]):
                heads[k] = None  # drop the spent block before decoding the next
                heads[k] = next(its[k], None)
                if heads[k] is None:
                    return
        m = min(len(heads[0]), len(heads[1]))
        yield start, heads[0][:m], heads[1][:m]
        heads = [h[m:] for h in heads]
        start += m


def _probe(path: str, side: str):
    from preprocess.media import probe

    try:
        info = probe(path)
    except MediaError as e:
        raise _media_reject(e, side) from e
    if not info.has_video:
        raise PairReject("undecodable", "no video stream", side, "probe")
    return info


def check_aspect(gen_info, ref_info, tolerance: float) -> None:
    """``aspect_mismatch`` reject when the generated video's display width/height ratio differs
    from the reference's by more than ``tolerance`` (relative): resizing it to the reference's
    frame would stretch the face, and every score would measure the stretch. Within it (a
    downscaled copy, rounding to even sizes) it is resized (``generated_resized``)."""
    gw, gh, rw, rh = gen_info.width, gen_info.height, ref_info.width, ref_info.height
    if not (gw and gh and rw and rh):
        return
    # as displayed: an anamorphic reference (224x224 stored, 4:3 pixels) is a 4:3 picture, which a
    # 298x224 square-pixel copy shows alike (both are decoded in square pixels, as displayed)
    ga, ra = gw * gen_info.sar / gh, rw * ref_info.sar / rh
    if abs(ga - ra) / ra > tolerance:
        raise PairReject("aspect_mismatch", f"generated is {gw}x{gh} (aspect {ga:.3f}), reference {rw}x{rh} "
                         f"({ra:.3f}): scoring would stretch it (tolerance {tolerance:g}; raise it with "
                         "--set aspect_tolerance=X)", "pair", "probe")


def frame_count(info) -> int:
    from preprocess.video import frame_count as fc

    return fc(info, FPS)


#: how a generated video of another frame size (same aspect) is resized to the reference's
RESIZE_UP, RESIZE_DOWN = "cv2.INTER_LINEAR", "cv2.INTER_AREA"


def resize_interpolation(src_hw, dst_hw) -> str | None:
    """The interpolation :func:`_resize_to` uses from ``src_hw`` to ``dst_hw`` (None: same size):
    bilinear (:data:`RESIZE_UP`) to enlarge a smaller generated video, area averaging
    (:data:`RESIZE_DOWN`) to shrink a larger one. Rows record it (``resize_interpolation``)."""
    if tuple(src_hw) == tuple(dst_hw):
        return None
    return RESIZE_DOWN if src_hw[0] * src_hw[1] > dst_hw[0] * dst_hw[1] else RESIZE_UP


def _resize_to(frames: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    how = resize_interpolation(frames.shape[1:3], hw)
    if how is None:
        return frames
    h, w = hw
    interp = cv2.INTER_AREA if how == RESIZE_DOWN else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (w, h), interpolation=interp) for f in frames])


# ------------------------------------------------------------------------------- faces
def face_tracker(backend, tracker_overrides: dict):
    """A ``preprocess.track.FaceTracker`` that keeps every continuous track of the main face,
    uncapped in length, none dropped for being short; fed frames block by block."""
    from preprocess import track

    tcfg = track.tracker_config(tracker_overrides, where="landmarks.tracker", min_segment_frames=1,
                                max_segment_frames=NO_CAP)
    return track.FaceTracker(backend, tcfg)


def fit_landmarks(backend, frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(T, 68, 2) landmarks of ``frames`` (T, H, W, 3) fitted from one box per frame (T, 4)."""
    return np.stack([np.asarray(backend.fit(np.ascontiguousarray(f), b), np.float64) for f, b in zip(frames, boxes)])


def sync_boxes(segments: list, n: int, scale: float = 1.0) -> list[np.ndarray]:
    """Per-frame (K, 4) box arrays (K = 0 or 1) from face segments, grown by ``scale``."""
    out = [np.zeros((0, 4)) for _ in range(n)]
    for seg in segments:
        for i, b in enumerate(np.asarray(seg.boxes, np.float64)):
            c, half = (b[:2] + b[2:]) / 2, (b[2:] - b[:2]) / 2 * scale
            out[seg.start + i] = np.concatenate([c - half, c + half])[None]
    return out


def _face_shift(gen_lm: np.ndarray, ref_lm: np.ndarray, ref_box) -> tuple[float, float]:
    """``(iou, scale)`` of the generated face against the reference's from their rigid landmarks:
    the reference's face box moved and scaled as the rigid points moved (centroid; RMS spread
    about it), its IoU with the box itself, and the scale (generated / reference)."""
    (cg, sg), (cr, sr) = rigid_frame(gen_lm), rigid_frame(ref_lm)   # dubbing moves the mouth, not these
    scale = sg / max(sr, 1e-6)
    corners = np.asarray(ref_box, np.float64).reshape(2, 2)
    moved = (cg + scale * (corners - cr)).reshape(4)
    return box_iou(moved, ref_box), scale


class FramingCheck:
    """Is the generated face where the reference's is? Pass 1 feeds it both videos' blocks;
    :meth:`verdict` decides over the frames inside the reference's face segments (module
    docstring, step 3). At each checked frame both frames are searched alike (the reference
    tracker's full-frame search; the generated frame resized as it is scored), the reference's
    largest face and the generated face nearest it are fitted from their own boxes, and the rigid
    landmarks (nose, eyes) give the shift and scale: an identical pair gives IoU 1 and scale 1
    exactly, a dubbed mouth does not move them. Only landmarks are kept, never frames.

    With ``identity`` (:class:`eval.metrics.identity.FaceIdentity`) it also measures, from the
    same frames and fitted landmarks, the face descriptor distance of the two faces (step 3,
    Identity); ``timer`` times that as ``identity``."""

    def __init__(self, cfg: EvalConfig, backend, n: int, identity=None, timer: "_Timer | None" = None):
        k = min(cfg.face_check_frames, n)
        self.positions = sorted({int((i + 0.5) * n / k) for i in range(k)}) if k else []
        self.cfg, self.backend, self.identity, self.timer = cfg, backend, identity, timer or _Timer()
        self.tracker = face_tracker(backend, cfg.landmarks.tracker)  # for its full-frame search (faces)
        self.found: dict[int, tuple[float, float] | None] = {}
        self.distances: dict[int, float | None] = {}

    def update(self, start: int, gen: np.ndarray, ref: np.ndarray) -> None:
        for t in self.positions:
            if not start <= t < start + len(ref):
                continue
            gen_f, ref_f = _resize_to(gen[t - start:t - start + 1], ref.shape[1:3])[0], ref[t - start]
            ref_dets, gen_dets = self.tracker.faces(ref_f), self.tracker.faces(gen_f)
            if not ref_dets or not gen_dets:
                self.found[t] = self.distances[t] = None
                continue
            ref_box = max(ref_dets, key=lambda d: d.side).box
            gen_box = max(gen_dets, key=lambda d: (box_iou(d.box, ref_box), d.side)).box
            (ref_lm, gen_lm) = fit_landmarks(self.backend, np.stack([ref_f, gen_f]), np.array([ref_box, gen_box]))
            self.found[t] = _face_shift(gen_lm, ref_lm, ref_box)
            if self.identity is not None:
                with self.timer("identity"):
                    self.distances[t] = self.identity.distance(ref_f, ref_lm, ref_box, gen_f, gen_lm, gen_box)

    def verdict(self, segments: list) -> dict:
        """``face_box_iou``, ``face_scale_ratio`` (medians; None when not decided) and
        ``face_check_frames`` (frames measured), plus ``checked`` (frames with a reference face
        track) and ``mismatch``. Decided when at least half of the checked frames were measured."""
        checked = [t for t in self.found if any(s.start <= t < s.stop for s in segments)]
        got = [self.found[t] for t in checked if self.found[t] is not None]
        out = {"face_box_iou": None, "face_scale_ratio": None, "face_check_frames": len(got),
               "checked": len(checked), "mismatch": False}
        if not got or 2 * len(got) < len(checked):
            return out
        iou = float(np.median([g[0] for g in got]))
        scale = float(np.exp(np.median(np.log([g[1] for g in got]))))
        out.update(face_box_iou=iou, face_scale_ratio=scale)
        out["mismatch"] = iou < self.cfg.face_min_iou or max(scale, 1 / scale) > self.cfg.face_max_scale
        return out

    def identity_verdict(self, segments: list) -> dict:
        """``identity_distance`` (median over the frames measured; None when not decided: no
        identity model, or fewer than half of the checked frames measured, as :meth:`verdict`),
        ``identity_check_frames``, ``checked``, ``distances`` (per frame) and ``flagged`` (above
        ``cfg.identity_max_distance``)."""
        checked = [t for t in self.found if any(s.start <= t < s.stop for s in segments)]
        got = {t: self.distances[t] for t in checked if self.distances.get(t) is not None}
        out = {"identity_distance": None, "identity_check_frames": len(got), "checked": len(checked),
               "distances": got, "flagged": None if self.identity is None else False}
        if not got or 2 * len(got) < len(checked):
            return out
        dist = float(np.median(list(got.values())))
        out.update(identity_distance=dist, flagged=dist > self.cfg.identity_max_distance)
        return out


class SyncBoxes:
    """Sync's face boxes of the generated video, one block at a time (first pass).

    With S3FD (``models.sync_detector``): the detector on every frame, as syncnet_python's
    pipeline. Otherwise the fallback: the landmark backend's tracker boxes (grown by
    ``sync.box_scale``), labelled as such in ``describe``."""

    def __init__(self, cfg: EvalConfig, models):
        self.detector = models.sync_detector
        self.scale = cfg.sync.box_scale
        self.boxes: list[np.ndarray] = []
        self.segments: list = []
        self.tracker = None if self.detector is not None else face_tracker(models.landmarks, cfg.landmarks.tracker)
        self.source = "s3fd" if self.detector is not None else f"{models.landmarks.name}_tracker"
        self.describe = (self.detector.describe() if self.detector is not None else
                         f"{models.landmarks.name} tracker boxes x{cfg.sync.box_scale:g} "
                         "(fallback, not S3FD: no S3FD weights configured)")

    def update(self, frames: np.ndarray) -> None:
        if self.detector is not None:
            self.boxes += [self.detector.detect(f)[:, :4] for f in frames]
        else:
            self.segments += self.tracker.update(frames)

    def finish(self, n: int) -> list[np.ndarray]:
        if self.detector is not None:
            return self.boxes[:n]
        return sync_boxes(self.segments + list(self.tracker.finish()), n, self.scale)


# ------------------------------------------------------------------------------- report images
def sample_image(pairs: list[tuple[np.ndarray, np.ndarray]], size: int | None = None, gap: int = 4) -> bytes:
    """PNG with one row per sampled frame: generated crop | reference crop (each resized to
    ``size``² when given)."""
    if not pairs:
        return b""
    if size is not None:
        pairs = [tuple(cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA) for x in p) for p in pairs]
    h, w = pairs[0][0].shape[:2]
    canvas = np.full((len(pairs) * (h + gap) - gap, 2 * w + gap, 3), 255, np.uint8)
    for r, (gen, ref) in enumerate(pairs):
        y = r * (h + gap)
        canvas[y:y + h, :w] = gen
        canvas[y:y + h, w + gap:] = ref
    ok, buf = cv2.imencode(".png", canvas[..., ::-1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _sample_positions(n_scored: int, k: int) -> set[int]:
    if n_scored == 0 or k == 0:
        return set()
    return {int(round(x)) for x in np.linspace(0, n_scored - 1, min(k, n_scored) + 2)[1:-1]} or {0}


# ------------------------------------------------------------------------------- the pair
def _identity_message(v: dict, cfg: EvalConfig) -> str:
    return (f"generated face is another person's: face descriptor distance {v['identity_distance']:.2f} "
            f"(dlib face recognition ResNet, median of {v['identity_check_frames']} of {v['checked']} frames checked; "
            f"above identity_max_distance {cfg.identity_max_distance:g}, dlib's same-person threshold 0.6): a "
            "mispaired file (a folder's names off by one, a wrong manifest line)? (--set identity_check=record "
            "scores it and flags it)")


def _framing_message(v: dict, cfg: EvalConfig, gen_hw, ref_hw) -> str:
    resized = (f"; generated {gen_hw[1]}x{gen_hw[0]} resized to the reference's {ref_hw[1]}x{ref_hw[0]}"
               if tuple(gen_hw) != tuple(ref_hw) else "")
    return (f"generated face is not where the reference's is (nose and eye landmarks, median of "
            f"{v['face_check_frames']} of {v['checked']} frames checked): face box IoU {v['face_box_iou']:.2f} "
            f"(min {cfg.face_min_iou:g}), generated face {v['face_scale_ratio']:.2f}x the reference's size "
            f"(max {cfg.face_max_scale:g}x)"
            f"{resized}: a crop, zoom or shift of the picture would be scored, not the method (--set "
            "face_check_frames=0 scores it anyway)")


class OffsetProbe:
    """PSNR of the crop at frame offsets −:data:`OFFSET_REACH`…+:data:`OFFSET_REACH` on a few
    frames (module docstring, step 4), fed the second pass's blocks (the generated one resized):
    keeps a per-(frame, offset) PSNR and, until the reference crop of their frame is cut, the
    generated crops that came before it (at most ``OFFSET_REACH`` per sampled frame). The reach is
    :data:`OFFSET_REACH`, or the largest that leaves ``k`` face-segment frames *t* with generated
    frames *t ± reach* inside the pair (a pair of 20 frames: 5), else one."""

    def __init__(self, segments: list, plans: list, n: int, k: int = OFFSET_FRAMES, reach: int = OFFSET_REACH):
        def eligible_at(r: int) -> list:   # frames t of a face segment with generated t - r … t + r in the pair
            return [(t, seg, plan) for seg, plan in zip(segments, plans)
                    for t in range(max(seg.start, r), min(seg.stop, n - r))]

        # the full reach when the pair is long enough; a short pair (max_frames) reaches as far as
        # still leaves k frames to sample (else any), so that a short pair is not judged on one frame
        self.reach = next((r for r in range(reach, 0, -1) if len(eligible_at(r)) >= k + 2),  # k distinct below
                          next((r for r in range(reach, 0, -1) if eligible_at(r)), 0))
        eligible = eligible_at(self.reach) if self.reach else []
        idx = np.unique(np.round(np.linspace(0, len(eligible) - 1, k + 2)[1:-1]).astype(int)) if eligible else []
        self.samples = [eligible[i] for i in idx]
        self.ref: dict[int, np.ndarray] = {}
        self.pending: dict[int, list] = {}
        self.psnr: dict[int, dict[int, float]] = {}

    def update(self, start: int, gen: np.ndarray, ref: np.ndarray) -> None:
        stop, r = start + len(ref), self.reach
        for t, seg, plan in self.samples:
            for j in range(max(start, t - r), min(stop, t + r + 1)):
                g = gen[j - start:j - start + 1]
                src = ref[j - start:j - start + 1] if j == t else g
                ref_c, gen_c = crop_mod.cut(plan, src, g, t - seg.start)
                if j == t:
                    self.ref[t] = ref_c[0]
                    for d, c in self.pending.pop(t, []):
                        self._score(t, d, c)
                if t in self.ref:
                    self._score(t, j - t, gen_c[0])
                else:
                    self.pending.setdefault(t, []).append((j - t, gen_c[0]))

    def _score(self, t: int, d: int, gen_c: np.ndarray) -> None:
        self.psnr.setdefault(t, {})[d] = float(psnr.psnr_per_frame(gen_c[None], self.ref[t][None])[0])

    def finish(self) -> dict:
        """``best_offset`` and ``offset_gain_db`` (None when no frame could be sampled), ``frames``
        and ``psnr`` (mean PSNR per offset)."""
        offsets = range(-self.reach, self.reach + 1)
        full = [v for v in self.psnr.values() if all(d in v for d in offsets)]
        if not full or not self.reach:
            return {"best_offset": None, "offset_gain_db": None, "frames": 0, "psnr": {}, "reach": self.reach}
        mean = {d: float(np.mean([v[d] for v in full])) for d in offsets}
        best = max(offsets, key=lambda d: (mean[d], d == 0, -abs(d)))
        return {"best_offset": int(best), "offset_gain_db": mean[best] - mean[0], "frames": len(full), "psnr": mean,
                "reach": self.reach}


def _offset_message(o: dict, cfg: EvalConfig) -> str:
    k = o["best_offset"]
    frames = f"{abs(k)} frame{'s' if abs(k) > 1 else ''}"
    what = (f"the generated video runs {frames} ahead (frames missing at its start?)" if k < 0 else
            f"the generated video runs {frames} behind (frames added at its start?)")
    return (f"generated frame t{k:+d} matches reference frame t best: PSNR {o['psnr'][k]:.1f} dB against "
            f"{o['psnr'][0]:.1f} dB as paired (t against t), mean of {o['frames']} frames of the crop "
            f"(offsets -{o['reach']}..+{o['reach']} tried); {what}. "
            f"Scored as paired, every metric would measure the shift (more than frame_offset_db "
            f"{cfg.frame_offset_db:g} dB; --set frame_offset=record scores it as paired and counts it)")


def _crop_flags(info: dict) -> int:
    flags = np.zeros(len(info["affines"]), bool)
    for k in ("padded", "out_of_frame", "unstable_radius"):
        if k in info:
            flags |= np.asarray(info[k], bool)
    return int(flags.sum())


class PairScorer:
    """Per-frame metrics over the reference's face segments, fed both videos block by block
    (second pass): keeps per-frame scores and the few sampled crops, never frames."""

    def __init__(self, segments: list, frame_hw: tuple[int, int], cfg: EvalConfig, models, timer: _Timer):
        self.segments, self.cfg, self.models, self.timer = segments, cfg, models, timer
        with timer("crop"):
            self.plans = [crop_mod.plan_crop(cfg.protocol, s.landmarks, frame_hw, size=cfg.crop_size) for s in segments]
        n_scored = sum(s.n_frames for s in segments)
        self.want = _sample_positions(n_scored, cfg.sample_frames)
        self.offsets = np.cumsum([0] + [s.n_frames for s in segments])  # position of each segment's first frame
        self.cols = {k: [] for k in ("frame_index", "psnr", "ms_ssim", "lpips", "lmd")}
        self.samples: list = []
        self.flagged = sum(_crop_flags(p) for p in self.plans)

    def update(self, start: int, gen: np.ndarray, ref: np.ndarray) -> None:
        from eval.metrics.lpips import lpips_per_frame

        stop, timer, cfg, models = start + len(ref), self.timer, self.cfg, self.models
        for seg, plan, off in zip(self.segments, self.plans, self.offsets):
            lo, hi = max(start, seg.start), min(stop, seg.stop)
            if lo >= hi:
                continue
            ref_s, gen_s = ref[lo - start:hi - start], gen[lo - start:hi - start]  # views, no copies
            with timer("crop"):
                gt_c, pr_c = crop_mod.cut(plan, ref_s, gen_s, lo - seg.start)
            with timer("psnr_msssim"):
                self.cols["psnr"].append(psnr.psnr_per_frame(pr_c, gt_c))
                self.cols["ms_ssim"].append(msssim.ms_ssim_per_frame(pr_c, gt_c, batch_size=MS_SSIM_BATCH))
            if models.lpips is not None:
                with timer("lpips"):
                    self.cols["lpips"].append(lpips_per_frame(models.lpips, pr_c, gt_c, batch_size=cfg.lpips.batch_size))
            with timer("lmd"):
                boxes = seg.boxes[lo - seg.start:hi - seg.start]
                gt_lm = fit_landmarks(models.landmarks, ref_s, boxes)
                pr_lm = fit_landmarks(models.landmarks, gen_s, boxes)
                part = {"affines": plan["affines"][lo - seg.start:hi - seg.start]}
                self.cols["lmd"].append(lmd_mod.lmd_per_frame(crop_mod.landmarks_to_crop(part, pr_lm),
                                                              crop_mod.landmarks_to_crop(part, gt_lm)))
            self.cols["frame_index"].append(np.arange(lo, hi))
            pos = off + lo - seg.start
            for j in range(hi - lo):
                if pos + j in self.want:
                    self.samples.append((lo + j, pr_c[j].copy(), gt_c[j].copy()))

    def finish(self):
        order = np.argsort(np.concatenate(self.cols["frame_index"]), kind="stable")
        per_frame = {k: (np.concatenate(v)[order] if v else None) for k, v in self.cols.items()}
        return per_frame, sorted(self.samples, key=lambda s: s[0]), self.flagged


def _sync_audio(gen_path, gen_info, n, timer: _Timer) -> tuple[np.ndarray | None, str | None, str | None]:
    """The generated video's 16 kHz audio for Sync, or (None, status, reason)."""
    from preprocess.audio import load_audio

    if not gen_info.has_audio:
        return None, "no_audio", "generated video has no audio stream"
    with timer("sync_audio"):
        try:
            return load_audio(gen_path, info=gen_info)[: n * SAMPLES_PER_FRAME], None, None
        except MediaError as e:
            return None, "audio_error", f"audio {e.reason}: {e.message}"


def _sync_row(res: dict | None, status: str, reason: str | None, boxes: SyncBoxes | None) -> dict:
    out = {"sync_c": None, "sync_d": None, "sync_offset": None, "sync_n_windows": None,
           "sync_missing": status != "scored" if status != "disabled" else None,
           "sync_missing_reason": reason, "sync_status": status,
           "sync_boxes": boxes.describe if boxes is not None else None,
           "sync_box_source": boxes.source if boxes is not None else None}
    if res is not None and not res["missing"]:
        out.update(sync_c=res["sync_c"], sync_d=res["sync_d"], sync_offset=int(res["offset"]),
                   sync_n_windows=int(res["n_windows"]))
    return out


def check_finite(row: dict, per_frame: dict) -> None:
    """``scoring_error`` reject when a clip score of ``row`` is NaN or ±inf, naming the metric and
    how many of its per-frame scores are not finite."""
    bad = nonfinite(row)
    if not bad:
        return
    parts = []
    for metric, v in bad.items():
        frames = per_frame.get(metric)
        n_bad = "" if frames is None else f", {int((~np.isfinite(frames)).sum())} of {len(frames)} frames non-finite"
        parts.append(f"{metric} {v}{n_bad}")
    raise PairReject("scoring_error", "non-finite clip score: " + "; ".join(parts) + " (counted as scored, the "
                     "clip would be left out of that metric's mean)", "pair", "score")


def _check_files(gen_path: str, ref_path: str, schemes) -> None:
    """Both files named, of an allowed URI scheme (checked before anything is opened) and present."""
    from preprocess.sources import scheme_of

    for path, side in ((gen_path, "generated"), (ref_path, "reference")):
        if not path:
            raise PairReject("missing_file", f"no {side} video paired with this key", side, "pair")
        if scheme_of(path) not in schemes:
            raise PairReject("unsupported_scheme", f"{scheme_of(path)}:// is not allowed (input.schemes: "
                             f"{list(schemes)}): {path}", side, "open")
        if uri_mod.chain_error(path):   # a folder's file named 'a::b.mp4': fsspec would read 'a'
            raise PairReject("unsupported_name", uri_mod.chain_error(path), side, "open")
    for path, side in ((gen_path, "generated"), (ref_path, "reference")):
        try:
            found = uri_mod.exists(path)
        except (OSError, ValueError) as e:
            raise PairReject("missing_file", f"cannot stat {path!r}: {e}", side, "open") from e
        if not found:
            hint = uri_mod.missing_hint(path) if "://" not in path else ""
            raise PairReject("missing_file", f"no such file: {path}{hint}", side, "open")


class PassProgress:
    """The progress bar's frames for a pair read in two passes (faces, then scores): each pass
    counts half, so a long pair moves the bar as it goes and ends at its frame count."""

    def __init__(self):
        self.sent = 0

    def to(self, passed: int) -> None:
        """``passed`` frames read so far over both passes (0 .. 2n)."""
        want = passed // 2
        if want > self.sent:
            progress.frames(want - self.sent)
            self.sent = want


def file_fingerprint(uri: str) -> str | None:
    """Which file was scored, without reading it: ``preprocess.catalog.fingerprint`` (size and change
    tag, as ``radio dub`` records for its inputs) as JSON. A video dubbed again at the same path, or a
    reference replaced, gives another fingerprint, so a rerun's rows can be told from the earlier
    run's. None when the file is gone (the pair is a ``missing_file`` reject anyway)."""
    from preprocess.catalog import fingerprint

    found = fingerprint(uri)
    return None if found is None else json.dumps(found, sort_keys=True)


def _stamp(path: str) -> tuple[int, int, int] | None:
    """What changes when a local file is rewritten or replaced (inode, size, mtime)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def evaluate_pair(gen_path: str, ref_path: str, cfg: EvalConfig, models) -> tuple[dict, dict]:
    """Score a generated video against its reference, streamed in blocks of ``cfg.chunk_frames``.

    gen_path, ref_path: fsspec URIs of a scheme in ``cfg.input.schemes`` (else an
    ``unsupported_scheme`` reject); remote files are copied to a temp file first, at most
    ``cfg.input.max_source_bytes`` (else ``too_large``).
    models: :class:`eval.models.EvalModels` (loaded once per worker).
    Returns ``(row, frames)``: ``row`` a flat dict of clip scores and provenance (each file's
    fingerprint, :func:`file_fingerprint`; protocol and its
    version, landmark backend and fitting, crop size, Sync box source and status, weight hashes,
    official flags, frame counts, timings); ``frames`` per-frame arrays over the scored frames
    (``frame_index``, ``psnr``, ``ms_ssim``, ``lpips`` or None, ``lmd``) plus ``sample_png``
    (generated | reference crops of ``cfg.sample_frames`` frames) and ``sample_frames``.
    Raises :class:`PairReject`.

    Two passes over both files, each holding one block of frames per video: the first tracks the
    reference's face (and finds Sync's boxes on the generated video), the second crops and
    scores. What stays in memory is per frame: landmarks, boxes, scores and SyncNet embeddings.
    """
    timer = _Timer()
    t_start = time.perf_counter()
    chunk = cfg.chunk_frames
    schemes, max_bytes = tuple(cfg.input.schemes), cfg.input.max_source_bytes
    _check_files(gen_path, ref_path, schemes)
    # before the files are opened: a local file changed after this is an input_changed reject
    prints = {"generated": file_fingerprint(gen_path), "reference": file_fingerprint(ref_path)}
    with contextlib.ExitStack() as stack:
        local = {}
        for path, side in ((gen_path, "generated"), (ref_path, "reference")):
            try:
                local[side] = stack.enter_context(uri_mod.local_copy(path, max_bytes=max_bytes, schemes=schemes))
            except MediaError as e:  # too_large (a fact about the file); an I/O error propagates
                raise _media_reject(e, side) from e
        gen_local, ref_local = local["generated"], local["reference"]
        stamps = {side: _stamp(p) for side, p in local.items()}
        with timer("probe"):
            gen_info, ref_info = _probe(gen_local, "generated"), _probe(ref_local, "reference")
        check_aspect(gen_info, ref_info, cfg.aspect_tolerance)
        n_gen, n_ref = frame_count(gen_info), frame_count(ref_info)
        if abs(n_gen - n_ref) > cfg.length_tolerance:
            raise PairReject("length_mismatch", f"generated has {n_gen} frames at 25 fps, reference {n_ref} "
                             f"(tolerance {cfg.length_tolerance} frames; raise it with --set length_tolerance=N)",
                             "pair", "probe")
        n = min(n_gen, n_ref, cfg.max_frames or NO_CAP)
        if n < 1:
            raise PairReject("undecodable", f"no 25 fps frame (generated {n_gen}, reference {n_ref})", "pair", "probe")
        progress.expect(n)
        # pass 1: reference face track, Sync boxes of the generated video
        tracker = face_tracker(models.landmarks, cfg.landmarks.tracker)
        sync_on = models.syncnet is not None
        boxes = SyncBoxes(cfg, models) if sync_on else None
        from eval.models import identity_model

        identity = identity_model(cfg, models)   # None: identity_check off (or the framing check)
        framing = FramingCheck(cfg, models.landmarks, n, identity=identity, timer=timer)
        segments, n_dec, ref_hw, gen_hw = [], 0, None, None
        shown = PassProgress()
        for start, gen_b, ref_b in iter_pair(gen_local, gen_info, ref_local, ref_info, n, chunk):
            ref_hw, gen_hw = ref_b.shape[1:3], gen_b.shape[1:3]
            with timer("faces"):
                segments += tracker.update(ref_b)
                framing.update(start, gen_b, ref_b)
            if boxes is not None:
                with timer("sync_faces"):
                    boxes.update(gen_b)
            n_dec = start + len(ref_b)
            shown.to(n_dec)
        with timer("faces"):
            segments += tracker.finish()
        n = n_dec
        n_face = sum(s.n_frames for s in segments)
        coverage = n_face / n
        if n_face == 0 or coverage < cfg.min_face_coverage:
            raise PairReject("no_face", f"reference face tracked in {n_face} of {n} frames "
                             f"(min coverage {cfg.min_face_coverage:g})", "reference", "faces")
        framed = framing.verdict(segments)
        if framed["mismatch"]:
            raise PairReject("content_mismatch", _framing_message(framed, cfg, gen_hw, ref_hw), "generated", "faces")
        ident = framing.identity_verdict(segments)
        if ident["flagged"] and cfg.identity_check == "reject":
            raise PairReject("identity_mismatch", _identity_message(ident, cfg), "generated", "faces")
        # pass 2: crops and scores, Sync crops and embeddings
        scorer = PairScorer(segments, ref_hw, cfg, models, timer)
        sync_stream, status, reason = None, "disabled", "sync disabled"
        if sync_on:
            from eval.metrics.sync import SyncStream

            audio, status, reason = _sync_audio(gen_local, gen_info, n, timer)
            if audio is not None:
                with timer("sync"):
                    sync_stream = SyncStream(models.syncnet, boxes.finish(n), audio,
                                             config=cfg.sync.track_config())
        probe = OffsetProbe(segments, scorer.plans, n)
        for start, gen_b, ref_b in iter_pair(gen_local, gen_info, ref_local, ref_info, n, chunk):
            gen_r = _resize_to(gen_b, ref_hw)
            scorer.update(start, gen_r, ref_b)
            with timer("offset"):
                probe.update(start, gen_r, ref_b)
            if sync_stream is not None:
                with timer("sync"):
                    sync_stream.push(start, gen_b)
            shown.to(n + start + len(ref_b))
        for side, p in local.items():   # each pass opens the file again: both must have read the same one
            if _stamp(p) != stamps[side]:
                raise PairReject("input_changed", f"the {side} video was replaced or rewritten while it was scored "
                                 "(a dub still writing it?): its two passes read different files; score it again",
                                 side, "score")
        per_frame, samples, flagged = scorer.finish()
        offset = probe.finish()
        shifted = bool(offset["best_offset"] and offset["offset_gain_db"] > cfg.frame_offset_db)
        if shifted and cfg.frame_offset == "reject":
            raise PairReject("frame_offset", _offset_message(offset, cfg), "generated", "score")
        res = None
        if sync_stream is not None:
            with timer("sync"):
                res = sync_stream.finish()
            status, reason = res["status"], res.get("reason")
        sync = _sync_row(res, status, reason, boxes)
    weights = models.describe()
    fitting = weights["landmark_fitting"]
    crop_h, crop_w = scorer.plans[0]["crop_size"]
    row = {
        "generated_fingerprint": prints["generated"], "reference_fingerprint": prints["reference"],
        "n_frames": int(n_face), "n_frames_compared": int(n), "n_frames_generated": int(n_gen),
        "n_frames_reference": int(n_ref), "frames_truncated": bool(n_gen != n_ref),
        "face_coverage": float(coverage), "n_face_segments": len(segments),
        "psnr": float(per_frame["psnr"].mean()), "ms_ssim": float(per_frame["ms_ssim"].mean()),
        "lpips": None if per_frame["lpips"] is None else float(per_frame["lpips"].mean()),
        "lmd": float(per_frame["lmd"].mean()), **sync,
        "protocol": cfg.protocol, "protocol_version": crop_mod.PROTOCOL_VERSIONS[cfg.protocol],
        "crop_size": int(cfg.crop_size), "crop_height": int(crop_h), "crop_width": int(crop_w),
        "crop_flagged_frames": int(flagged),
        "frame_height": int(ref_hw[0]), "frame_width": int(ref_hw[1]),
        "generated_resized": bool(tuple(gen_hw) != tuple(ref_hw)),
        "generated_height": int(gen_hw[0]), "generated_width": int(gen_hw[1]),
        "resize_interpolation": resize_interpolation(gen_hw, ref_hw),
        **{k: framed[k] for k in ("face_box_iou", "face_scale_ratio", "face_check_frames")},
        "identity_distance": ident["identity_distance"], "identity_flagged": ident["flagged"],
        "identity_check_frames": int(ident["identity_check_frames"]),
        "identity_sha256": identity.sha256 if identity is not None else None,
        "best_offset": offset["best_offset"], "offset_gain_db": offset["offset_gain_db"],
        "frame_offset_flagged": shifted,
        "landmark_backend": weights["landmark_backend"],
        "landmark_weights": json.dumps(weights["landmark_weights"], sort_keys=True),
        "landmark_fitting": json.dumps(fitting, sort_keys=True), "landmark_fit_boxes": int(fitting["fit_boxes"]),
        "lmd_landmarks": LMD_LANDMARKS,
        "lpips_backbone_sha256": weights.get("lpips_backbone_sha256"),
        "lpips_linear_sha256": weights.get("lpips_linear_sha256"),
        "lpips_official_weights": weights.get("official_weights"),
        "lpips_label": weights.get("lpips_label"),
        "syncnet_sha256": weights.get("syncnet_sha256"),
        "sync_official_weights": weights.get("sync_official_weights"),
        "sync_label": weights.get("sync_label"),
        "sync_track_config": json.dumps(dataclasses.asdict(cfg.sync.track_config()), sort_keys=True)
        if sync_on else None,
        "seconds": float(time.perf_counter() - t_start),
        "timings": json.dumps({k: round(v, 4) for k, v in timer.seconds.items()}, sort_keys=True),
    }
    check_finite(row, per_frame)
    frames = {**per_frame, "sample_frames": [s[0] for s in samples],
              "sample_png": sample_image([(s[1], s[2]) for s in samples], cfg.sample_size)}
    return row, frames
