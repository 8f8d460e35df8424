"""Score one (generated, reference) video pair: plain functions, no Beam.

:func:`evaluate_pair` is the whole per-pair job; ``pipelines.evaluate`` only wires it.

1. **Lengths.** Both files are probed and their 25 fps frame counts compared: a difference above
   ``cfg.length_tolerance`` frames is a ``length_mismatch`` reject; within it, both are cut to
   the shorter (``frames_truncated`` records it), then to ``cfg.max_frames`` if set.
2. **Decode** both at 25 fps CFR (``preprocess.video``). A generated video of another frame size
   is resized to the reference's (``generated_resized``), as :mod:`eval.crop` requires.
3. **Reference faces.** ``preprocess.track.FaceTracker`` with the configured landmark backend
   runs over the reference (no segment length cap, no minimum). Frames outside a face segment are
   not scored (``face_coverage``); coverage under ``cfg.min_face_coverage`` (or no face at all) is
   a ``no_face`` reject.
4. **Crops** per face segment with ``cfg.protocol`` (:func:`eval.crop.crop_pair`, the same box for
   both videos, size ``cfg.crop_size``), then per frame PSNR, MS-SSIM, LPIPS (when enabled).
5. **LMD landmarks.** Both videos are fitted by the same backend on their *full frames* from the
   same box per frame — the reference track's box, in the detector's convention — and mapped into
   crop pixels with the crop's affine (:func:`eval.crop.landmarks_to_crop`). Same fitter, same box:
   identical frames give LMD 0 exactly, and no tracker state (box prediction from the previous
   frame) favours one side. The tracker's own landmarks only place the crop.
6. **Sync-C/D** (when enabled) on the generated full-frame video (before any resize) and its own
   audio, with its own face boxes: a second tracker pass with the configured backend over the
   generated frames gives one box per tracked frame. These are the backend's boxes (dlib's HOG box
   is tighter than the S3FD box syncnet_python uses; ``sync.box_scale`` can grow them), so the
   224×224 crops differ in scale from the official pipeline's — the row says which boxes were used.
   No usable track, or no audio stream: ``sync_missing`` with a reason (the pair is still scored).

Every data problem raises :class:`PairReject` with a reason from :data:`REJECT_REASONS`;
anything else is a bug and propagates.

Memory: both videos are held decoded, about 2·n·H·W·3 bytes for n frames (a third copy when the
generated video is resized): 250 frames of 1080p ≈ 3 GB. Cap long clips with ``max_frames``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time

import cv2
import numpy as np

from eval import crop as crop_mod
from eval.config import EvalConfig
from eval.metrics import lmd as lmd_mod
from eval.metrics import msssim, psnr
from preprocess import uri as uri_mod
from preprocess.media import MediaError

log = logging.getLogger(__name__)

FPS = 25
SAMPLES_PER_FRAME = 16000 // FPS
REJECT_REASONS = ("missing_file", "length_mismatch", "no_face", "undecodable")
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


def _media_reject(e: MediaError, side: str) -> PairReject:
    reason = "missing_file" if e.reason == "not_found" else "undecodable"
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
def decode_first(path: str, info, n: int, side: str) -> np.ndarray:
    """The first ``n`` 25 fps frames of a local file, (n', H, W, 3) uint8 RGB with n' ≤ n."""
    from preprocess import video

    blocks, got = [], 0
    try:
        gen = video.iter_frames(path, info=info, fps=FPS)
        try:
            for block in gen:
                blocks.append(block[: n - got])
                got += len(blocks[-1])
                if got >= n:
                    break
        finally:
            gen.close()
    except MediaError as e:
        raise _media_reject(e, side) from e
    if not blocks:
        raise PairReject("undecodable", "no frames decoded", side, "decode")
    return np.concatenate(blocks) if len(blocks) > 1 else blocks[0]


def _probe(path: str, side: str):
    from preprocess.media import probe

    try:
        info = probe(path)
    except MediaError as e:
        raise _media_reject(e, side) from e
    if not info.has_video:
        raise PairReject("undecodable", "no video stream", side, "probe")
    return info


def frame_count(info) -> int:
    from preprocess.video import frame_count as fc

    return fc(info, FPS)


def _resize_to(frames: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if frames.shape[1:3] == tuple(hw):
        return frames
    h, w = hw
    interp = cv2.INTER_AREA if frames.shape[1] * frames.shape[2] > h * w else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (w, h), interpolation=interp) for f in frames])


# ------------------------------------------------------------------------------- faces
def track_segments(frames: np.ndarray, backend, tracker_overrides: dict) -> list:
    """Face segments (``preprocess.track.FaceSegment``) of ``frames``: every continuous track of
    the main face, uncapped in length, none dropped for being short."""
    from preprocess import track

    tcfg = track.tracker_config(tracker_overrides, where="landmarks.tracker", min_segment_frames=1,
                                max_segment_frames=NO_CAP)
    return list(track.track_faces((frames[i:i + 64] for i in range(0, len(frames), 64)), backend, tcfg))


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
def _crop_flags(info: dict) -> int:
    flags = np.zeros(len(info["affines"]), bool)
    for k in ("padded", "out_of_frame", "unstable_radius"):
        if k in info:
            flags |= np.asarray(info[k], bool)
    return int(flags.sum())


def _score_segments(ref, gen, segments, cfg: EvalConfig, models, timer: _Timer):
    """Per-frame metrics over the reference's face segments, plus the sampled crops."""
    from eval.metrics.lpips import lpips_per_frame

    n_scored = sum(s.n_frames for s in segments)
    want = _sample_positions(n_scored, cfg.sample_frames)
    cols = {k: [] for k in ("frame_index", "psnr", "ms_ssim", "lpips", "lmd")}
    samples, flagged, pos = [], 0, 0
    for seg in segments:
        idx = np.arange(seg.start, seg.stop)
        ref_s, gen_s = ref[seg.start:seg.stop], gen[seg.start:seg.stop]  # views, no copies
        with timer("crop"):
            gt_c, pr_c, info = crop_mod.crop_pair(cfg.protocol, ref_s, gen_s, seg.landmarks, size=cfg.crop_size)
        flagged += _crop_flags(info)
        with timer("psnr_msssim"):
            cols["psnr"].append(psnr.psnr_per_frame(pr_c, gt_c))
            cols["ms_ssim"].append(msssim.ms_ssim_per_frame(pr_c, gt_c, batch_size=MS_SSIM_BATCH))
        if models.lpips is not None:
            with timer("lpips"):
                cols["lpips"].append(lpips_per_frame(models.lpips, pr_c, gt_c, batch_size=cfg.lpips.batch_size))
        with timer("lmd"):
            gt_lm = fit_landmarks(models.landmarks, ref_s, seg.boxes)
            pr_lm = fit_landmarks(models.landmarks, gen_s, seg.boxes)
            cols["lmd"].append(lmd_mod.lmd_per_frame(crop_mod.landmarks_to_crop(info, pr_lm),
                                                     crop_mod.landmarks_to_crop(info, gt_lm)))
        cols["frame_index"].append(idx)
        for j in range(len(idx)):
            if pos + j in want:
                samples.append((int(idx[j]), pr_c[j], gt_c[j]))
        pos += len(idx)
    per_frame = {k: (np.concatenate(v) if v else None) for k, v in cols.items()}
    return per_frame, samples, flagged


def _sync(gen_frames, gen_path, gen_info, n, cfg: EvalConfig, models, timer: _Timer) -> dict:
    from eval.metrics.sync import evaluate_sync
    from preprocess.audio import load_audio

    out = {"sync_c": None, "sync_d": None, "sync_offset": None, "sync_n_windows": None,
           "sync_missing": True, "sync_missing_reason": None,
           "sync_boxes": f"{models.landmarks.name} tracker boxes x{cfg.sync.box_scale:g} (not S3FD)"}
    if not gen_info.has_audio:
        out["sync_missing_reason"] = "generated video has no audio stream"
        return out
    with timer("sync_audio"):
        try:
            audio = load_audio(gen_path, info=gen_info)[: n * SAMPLES_PER_FRAME]
        except MediaError as e:
            out["sync_missing_reason"] = f"audio {e.reason}: {e.message}"
            return out
    with timer("sync_faces"):
        segs = track_segments(gen_frames, models.landmarks, cfg.landmarks.tracker)
        boxes = sync_boxes(segs, len(gen_frames), cfg.sync.box_scale)
    with timer("sync"):
        try:
            res = evaluate_sync(models.syncnet, gen_frames, boxes, audio, config=cfg.sync.track_config())
        except ValueError as e:  # e.g. a track whose audio is too short for one 5-frame window
            out["sync_missing_reason"] = f"sync not computable: {e}"
            return out
    if res["missing"]:
        out["sync_missing_reason"] = res["reason"]
        return out
    out.update(sync_c=res["sync_c"], sync_d=res["sync_d"], sync_offset=int(res["offset"]),
               sync_n_windows=int(res["n_windows"]), sync_missing=False)
    return out


def evaluate_pair(gen_path: str, ref_path: str, cfg: EvalConfig, models) -> tuple[dict, dict]:
    """Score a generated video against its reference.

    gen_path, ref_path: fsspec URIs (remote files are copied to a temp file first).
    models: :class:`eval.models.EvalModels` (loaded once per worker).
    Returns ``(row, frames)``: ``row`` a flat dict of clip scores and provenance (protocol,
    landmark backend, crop size, weight hashes, official flags, frame counts, timings);
    ``frames`` per-frame arrays over the scored frames (``frame_index``, ``psnr``, ``ms_ssim``,
    ``lpips`` or None, ``lmd``) plus ``sample_png`` (generated | reference crops of
    ``cfg.sample_frames`` frames) and ``sample_frames`` (their indices).
    Raises :class:`PairReject`.
    """
    timer = _Timer()
    t_start = time.perf_counter()
    for path, side in ((gen_path, "generated"), (ref_path, "reference")):
        if not path:
            raise PairReject("missing_file", f"no {side} video paired with this key", side, "pair")
        try:
            found = uri_mod.exists(path)
        except (OSError, ValueError) as e:
            raise PairReject("missing_file", f"cannot stat {path!r}: {e}", side, "open") from e
        if not found:
            raise PairReject("missing_file", f"no such file: {path}", side, "open")
    with contextlib.ExitStack() as stack:
        gen_local = stack.enter_context(uri_mod.local_copy(gen_path))
        ref_local = stack.enter_context(uri_mod.local_copy(ref_path))
        with timer("probe"):
            gen_info, ref_info = _probe(gen_local, "generated"), _probe(ref_local, "reference")
        n_gen, n_ref = frame_count(gen_info), frame_count(ref_info)
        if abs(n_gen - n_ref) > cfg.length_tolerance:
            raise PairReject("length_mismatch", f"generated has {n_gen} frames at 25 fps, reference {n_ref} "
                             f"(tolerance {cfg.length_tolerance})", "pair", "probe")
        n = min(n_gen, n_ref, cfg.max_frames or NO_CAP)
        if n < 1:
            raise PairReject("undecodable", f"no 25 fps frame (generated {n_gen}, reference {n_ref})", "pair", "probe")
        with timer("decode"):
            gen_full = decode_first(gen_local, gen_info, n, "generated")
            ref = decode_first(ref_local, ref_info, n, "reference")
        n = min(len(gen_full), len(ref))
        gen_full, ref = gen_full[:n], ref[:n]
        gen = _resize_to(gen_full, ref.shape[1:3])
        with timer("faces"):
            segments = track_segments(ref, models.landmarks, cfg.landmarks.tracker)
        n_face = sum(s.n_frames for s in segments)
        coverage = n_face / n
        if n_face == 0 or coverage < cfg.min_face_coverage:
            raise PairReject("no_face", f"reference face tracked in {n_face} of {n} frames "
                             f"(min coverage {cfg.min_face_coverage:g})", "reference", "faces")
        per_frame, samples, flagged = _score_segments(ref, gen, segments, cfg, models, timer)
        sync = {"sync_c": None, "sync_d": None, "sync_offset": None, "sync_n_windows": None,
                "sync_missing": None, "sync_missing_reason": "sync disabled", "sync_boxes": None}
        if models.syncnet is not None:
            sync = _sync(gen_full, gen_local, gen_info, n, cfg, models, timer)
    weights = models.describe()
    row = {
        "n_frames": int(n_face), "n_frames_compared": int(n), "n_frames_generated": int(n_gen),
        "n_frames_reference": int(n_ref), "frames_truncated": bool(n_gen != n_ref),
        "face_coverage": float(coverage), "n_face_segments": len(segments),
        "psnr": float(per_frame["psnr"].mean()), "ms_ssim": float(per_frame["ms_ssim"].mean()),
        "lpips": None if per_frame["lpips"] is None else float(per_frame["lpips"].mean()),
        "lmd": float(per_frame["lmd"].mean()), **{k: sync[k] for k in (
            "sync_c", "sync_d", "sync_offset", "sync_n_windows", "sync_missing", "sync_missing_reason")},
        "protocol": cfg.protocol, "crop_size": int(cfg.crop_size), "crop_flagged_frames": int(flagged),
        "frame_height": int(ref.shape[1]), "frame_width": int(ref.shape[2]),
        "generated_resized": bool(gen.shape[1:3] != gen_full.shape[1:3]),
        "landmark_backend": weights["landmark_backend"],
        "landmark_weights": json.dumps(weights["landmark_weights"], sort_keys=True),
        "lmd_landmarks": LMD_LANDMARKS,
        "lpips_backbone_sha256": weights.get("lpips_backbone_sha256"),
        "lpips_linear_sha256": weights.get("lpips_linear_sha256"),
        "lpips_official_weights": weights.get("official_weights"),
        "lpips_label": weights.get("lpips_label"),
        "syncnet_sha256": weights.get("syncnet_sha256"),
        "sync_official_weights": weights.get("sync_official_weights"),
        "sync_label": weights.get("sync_label"), "sync_boxes": sync["sync_boxes"],
        "sync_track_config": json.dumps(dataclasses.asdict(cfg.sync.track_config()), sort_keys=True)
        if models.syncnet is not None else None,
        "seconds": float(time.perf_counter() - t_start),
        "timings": json.dumps({k: round(v, 4) for k, v in timer.seconds.items()}, sort_keys=True),
    }
    frames = {**per_frame, "sample_frames": [s[0] for s in samples],
              "sample_png": sample_image([(s[1], s[2]) for s in samples], cfg.sample_size)}
    return row, frames
