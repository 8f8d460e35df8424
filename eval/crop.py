"""Evaluation crops: the same face box cut from a method's output and from the ground truth.

Two protocols (SPEC "Evaluation"; paper appendix B, figure 6):

``radio-v1``
    Per frame: the ground truth's FFHQ quad (:func:`preprocess.align.ffhq_quad`, no temporal
    smoothing) warps *both* the ground-truth frame and the method's pasted-back full frame to
    512×512 with one affine (:func:`preprocess.align.warp_face`, replicate border). Landmarks of
    the aligned ground truth (the source landmarks mapped through that affine, or landmarks
    detected on the aligned frame if given) define
    ``R = max(max_k y_k − y_29, x_54 − x_48)`` and a square box centred on landmark 33,
    ``[x_33 − R, x_33 + R) × [y_33 − R, y_33 + R)`` (corners rounded to whole pixels, side
    ``round(2R)``), cut with replicate padding where it leaves the 512 frame and resized to
    256×256 with ``cv2.INTER_AREA``.

``dinet`` (version 2)
    DINet's own crop on the full frames, as its ``inference.py`` and ``compute_crop_radius`` do
    it: landmarks cast to int first (``astype(int)``, truncation); ``r_t = floor(s·max(max_k y_k
    − y_29, x_54 − x_48)/2)`` with s = 1.05; ``r`` = max of r_t over frames t−2..t+2 (clip ends
    edge-padded); ``r = (int(r/4) + 1)·4``; rows ``[y_29 − r, y_29 + 2r + r//4)``, cols
    ``[x_33 − r − r//4, x_33 + r + r//4)``. The box is 3.25r × 2.5r (h × w); it is resized
    bilinearly (``cv2.resize``'s default) to DINet's ``resize_h × resize_w`` for its
    ``mouth_region_size`` m: ``h = (m//2)·3 + m//8``, ``w = m + m//4`` — 416×320 for DINet's
    default m = 256 (``size`` is m). Where DINet would *skip* a window (box out of frame, or
    ``max r_t > 1.5·min r_t`` in the window), this function still crops — replicate padding
    outside the frame — and flags the frame in ``info`` and the log. Version 1 (float landmarks
    floored, resized to 256×256 with ``INTER_AREA``) squashed the 1.3:1 box; its rows say
    ``protocol_version`` 1.

Indices are 0-based iBUG: y_29 is the paper's "thirtieth point", landmark 33 its "thirty-fourth
point" (base of the nose, SPEC "Media conventions"), 48/54 the mouth corners.

Both functions take full frames (T, H, W, 3) uint8 of the ground truth and of the method (same
size: resize a method's output to the ground truth's frame size first) plus the ground truth's
landmarks (T, 68, 2) in source pixels, and return ``(gt_crops, pred_crops, info)``: two
(T, h, w, 3) uint8 arrays cut with identical boxes, and an info dict with the protocol, crop
size, per-frame boxes, flags, and per-frame 2×3 source→crop affines (map full-frame landmarks
into crop pixels with :func:`landmarks_to_crop`, e.g. for LMD).
"""
from __future__ import annotations

import logging

import cv2
import numpy as np

from preprocess.align import apply_affine, ffhq_quad, quad_to_affine, warp_face

log = logging.getLogger(__name__)

PROTOCOLS = ("radio-v1", "dinet")
#: version of each protocol recorded in every score row (SPEC "Evaluation"); bump on any change
PROTOCOL_VERSIONS = {"radio-v1": 1, "dinet": 2}
CROP_SIZE = 256
ALIGN_SIZE = 512
DINET_SCALE = 1.05


def _check_frames(gt_frames, pred_frames):
    gt = np.asarray(gt_frames)
    pred = np.asarray(pred_frames)
    if gt.ndim != 4 or gt.shape[-1] != 3 or gt.dtype != np.uint8:
        raise ValueError(f"Expected gt_frames uint8 of shape (T, H, W, 3). Got {gt.dtype} {gt.shape}.")
    if pred.shape != gt.shape or pred.dtype != np.uint8:
        raise ValueError(f"Expected pred_frames uint8 of the ground truth's shape {gt.shape} (resize the "
                         f"method's output to the source frame size first). Got {pred.dtype} {pred.shape}.")
    return gt, pred


def _check_inputs(gt_frames, pred_frames, gt_landmarks):
    gt, pred = _check_frames(gt_frames, pred_frames)
    return gt, pred, _check_landmarks(gt_landmarks, len(gt))


def cut_box(img: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Rows [y0, y1) × cols [x0, x1) of ``img``, replicating edge pixels outside the image."""
    h, w = img.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 > cx0 and cy1 > cy0:  # a view of the in-frame part, edge rows/cols replicated around it
        inner = img[cy0:cy1, cx0:cx1]
        if (cx0, cy0, cx1, cy1) == (x0, y0, x1, y1):
            return inner.copy()
        return cv2.copyMakeBorder(inner, cy0 - y0, y1 - cy1, cx0 - x0, x1 - cx1, cv2.BORDER_REPLICATE)
    ys = np.clip(np.arange(y0, y1), 0, h - 1)
    xs = np.clip(np.arange(x0, x1), 0, w - 1)
    return img[ys[:, None], xs[None, :]]


def _box_affine(x0: float, y0: float, x1: float, y1: float, out_hw: tuple[int, int]) -> np.ndarray:
    """2×3 affine sending the box's outer pixel edges to the output's (pixel centres at integers)."""
    sy, sx = out_hw[0] / (y1 - y0), out_hw[1] / (x1 - x0)
    return np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5]])


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Affine ``outer ∘ inner`` (apply ``inner`` first)."""
    lin = outer[:, :2] @ inner[:, :2]
    return np.hstack([lin, (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]])


def _resize(img: np.ndarray, out_hw: tuple[int, int], interpolation: int = cv2.INTER_AREA) -> np.ndarray:
    return cv2.resize(img, (out_hw[1], out_hw[0]), interpolation=interpolation)


def radio_v1_radius(lm: np.ndarray) -> float:
    """R = max(max_k y_k − y_29, x_54 − x_48) of one (68, 2) landmark set."""
    return float(max(lm[:, 1].max() - lm[29, 1], lm[54, 0] - lm[48, 0]))


def _check_landmarks(gt_landmarks, n: int | None = None) -> np.ndarray:
    lm = np.asarray(gt_landmarks, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (68, 2) or (n is not None and len(lm) != n):
        raise ValueError(f"Expected gt_landmarks of shape ({n if n is not None else 'T'}, 68, 2). Got {lm.shape}.")
    if not np.all(np.isfinite(lm)):
        raise ValueError("Expected finite gt_landmarks. Got NaN/inf (a frame without a face?).")
    return lm


def plan_radio_v1(gt_landmarks, *, size: int = CROP_SIZE, align_size: int = ALIGN_SIZE,
                  aligned_gt_landmarks=None) -> dict:
    """The ``radio-v1`` boxes of a face track, without any pixels: (T, 68, 2) -> info dict.

    Everything :func:`cut` needs to crop frames t of the track later, chunk by chunk.
    """
    lm = _check_landmarks(gt_landmarks)
    out_hw = (size, size)
    n = len(lm)
    quads = np.empty((n, 4, 2))
    boxes = np.empty((n, 4), np.int64)
    radius = np.empty(n)
    align = np.empty((n, 2, 3))
    affines = np.empty((n, 2, 3))
    padded = np.zeros(n, bool)
    for t in range(n):
        quads[t] = ffhq_quad(lm[t])
        align[t] = a = quad_to_affine(quads[t], align_size)
        lm_al = apply_affine(a, lm[t]) if aligned_gt_landmarks is None else np.asarray(aligned_gt_landmarks[t], float)
        radius[t] = r = radio_v1_radius(lm_al)
        if not r > 0:
            raise ValueError(f"Expected a positive crop radius. Got R={r} at frame {t} (degenerate landmarks).")
        side = max(1, int(round(2 * r)))
        x0 = int(round(lm_al[33, 0] - r))
        y0 = int(round(lm_al[33, 1] - r))
        boxes[t] = x0, y0, x0 + side, y0 + side
        padded[t] = x0 < 0 or y0 < 0 or x0 + side > align_size or y0 + side > align_size
        affines[t] = _compose(_box_affine(x0, y0, x0 + side, y0 + side, out_hw), a)
    if padded.any():
        log.info("radio-v1 crop: %d of %d frames' boxes leave the aligned %d frame (replicate padding)",
                 int(padded.sum()), n, align_size)
    return {"protocol": "radio-v1", "version": PROTOCOL_VERSIONS["radio-v1"], "crop_size": out_hw,
            "align_size": align_size, "quads": quads, "boxes": boxes, "box_space": f"aligned {align_size}x{align_size}",
            "radius": radius, "align_affines": align, "affines": affines, "padded": padded,
            "landmarks_from": "source landmarks mapped by the affine" if aligned_gt_landmarks is None
            else "given aligned landmarks"}


def cut(info: dict, gt_frames, pred_frames, start: int = 0):
    """Crops of frames ``start … start + len(gt_frames)`` of a planned track (:func:`plan_crop`):
    (T', H, W, 3) uint8 ×2 -> two (T', h, w, 3) uint8, the same box for both."""
    gt, pred = _check_frames(gt_frames, pred_frames)
    if not 0 <= start and start + len(gt) <= len(info["boxes"]):
        raise ValueError(f"Expected frames within the plan's {len(info['boxes'])}. Got {start}…{start + len(gt)}.")
    out_hw = tuple(info["crop_size"])
    gt_c = np.empty((len(gt),) + out_hw + (3,), np.uint8)
    pred_c = np.empty_like(gt_c)
    for i in range(len(gt)):
        x0, y0, x1, y1 = (int(v) for v in info["boxes"][start + i])
        for src, dst in ((gt, gt_c), (pred, pred_c)):
            if info["protocol"] == "radio-v1":
                aligned = warp_face(src[i], info["align_affines"][start + i], info["align_size"])
                dst[i] = _resize(cut_box(aligned, x0, y0, x1, y1), out_hw)
            else:  # dinet: the source frame, bilinear as DINet's cv2.resize
                dst[i] = _resize(cut_box(src[i], x0, y0, x1, y1), out_hw, cv2.INTER_LINEAR)
    return gt_c, pred_c


def crop_radio_v1(gt_frames, pred_frames, gt_landmarks, *, size: int = CROP_SIZE,
                  align_size: int = ALIGN_SIZE, aligned_gt_landmarks=None):
    """Protocol ``radio-v1``. (T, H, W, 3) uint8 ×2 + (T, 68, 2) -> two (T, size, size, 3) + info.

    ``aligned_gt_landmarks`` (T, 68, 2), optional: landmarks detected on the aligned ground truth
    at ``align_size``; by default the source landmarks are mapped through each frame's affine.
    """
    gt, pred, lm = _check_inputs(gt_frames, pred_frames, gt_landmarks)
    info = plan_radio_v1(lm, size=size, align_size=align_size, aligned_gt_landmarks=aligned_gt_landmarks)
    return (*cut(info, gt, pred), info)


def dinet_size(mouth_region_size: int = CROP_SIZE) -> tuple[int, int]:
    """DINet's crop (h, w) for its ``mouth_region_size`` m (inference.py's resize_h, resize_w)."""
    m = int(mouth_region_size)
    return (m // 2) * 3 + m // 8, m + m // 4


def dinet_landmarks(lm) -> np.ndarray:
    """Landmarks as DINet holds them: ``astype(int)`` (truncation towards zero), int64."""
    return np.trunc(np.asarray(lm, dtype=np.float64)).astype(np.int64)


def dinet_radii(lm: np.ndarray, scale: float = DINET_SCALE):
    """Per-frame r_t, windowed-and-rounded r, and the instability flag. (T, 68, 2) int -> 3 × (T,)."""
    r_t = np.floor(scale * np.maximum(lm[:, :, 1].max(axis=1) - lm[:, 29, 1], lm[:, 54, 0] - lm[:, 48, 0]) / 2)
    pad = np.pad(r_t, 2, mode="edge")
    win = np.lib.stride_tricks.sliding_window_view(pad, 5)  # (T, 5): frames t-2..t+2
    r_max, r_min = win.max(axis=1), win.min(axis=1)
    r = ((np.floor(r_max / 4) + 1) * 4).astype(np.int64)
    return r_t, r, r_max > 1.5 * r_min


def plan_dinet(gt_landmarks, frame_hw: tuple[int, int], *, size: int = CROP_SIZE, scale: float = DINET_SCALE) -> dict:
    """The ``dinet`` v2 boxes of a face track on (H, W) frames, without any pixels (see :func:`cut`)."""
    lm = dinet_landmarks(_check_landmarks(gt_landmarks))
    out_hw = dinet_size(size)
    h, w = frame_hw
    r_t, r, unstable = dinet_radii(lm, scale)
    q = r // 4
    y29, x33 = lm[:, 29, 1], lm[:, 33, 0]
    boxes = np.stack([x33 - r - q, y29 - r, x33 + r + q, y29 + 2 * r + q], axis=1)  # x0, y0, x1, y1
    out_of_frame = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > w) | (boxes[:, 3] > h)
    affines = np.stack([_box_affine(*(int(v) for v in b), out_hw) for b in boxes]) if len(boxes) else np.empty((0, 2, 3))
    if out_of_frame.any():
        log.warning("dinet crop: frames %s have boxes outside the %dx%d frame (edge-replicated, not dropped)",
                    np.flatnonzero(out_of_frame).tolist(), w, h)
    if unstable.any():
        log.warning("dinet crop: frames %s have max r_t > 1.5 min r_t in their 5-frame window (kept, flagged)",
                    np.flatnonzero(unstable).tolist())
    return {"protocol": "dinet", "version": PROTOCOL_VERSIONS["dinet"], "crop_size": out_hw, "scale": scale,
            "boxes": boxes, "box_space": "source pixels", "radius": r, "radius_t": r_t, "affines": affines,
            "out_of_frame": out_of_frame, "unstable_radius": unstable}


def crop_dinet(gt_frames, pred_frames, gt_landmarks, *, size: int = CROP_SIZE, scale: float = DINET_SCALE):
    """Protocol ``dinet`` v2. (T, H, W, 3) uint8 ×2 + (T, 68, 2) -> two (T, h, w, 3) + info.

    ``size``: DINet's ``mouth_region_size`` m; the crops are :func:`dinet_size` (m) = 416×320 for
    256. Out-of-frame boxes and unstable radius windows are flagged in ``info``
    (``out_of_frame``, ``unstable_radius``) and logged, never dropped.
    """
    gt, pred, lm = _check_inputs(gt_frames, pred_frames, gt_landmarks)
    info = plan_dinet(lm, gt.shape[1:3], size=size, scale=scale)
    return (*cut(info, gt, pred), info)


def plan_crop(protocol: str, gt_landmarks, frame_hw: tuple[int, int], *, size: int = CROP_SIZE) -> dict:
    """Dispatch :func:`plan_radio_v1` / :func:`plan_dinet` on ``protocol``."""
    if protocol == "radio-v1":
        return plan_radio_v1(gt_landmarks, size=size)
    if protocol == "dinet":
        return plan_dinet(gt_landmarks, frame_hw, size=size)
    raise ValueError(f"Expected protocol in {PROTOCOLS}. Got {protocol!r}.")


def crop_pair(protocol: str, gt_frames, pred_frames, gt_landmarks, **kwargs):
    """Dispatch on ``protocol`` (one of :data:`PROTOCOLS`)."""
    if protocol == "radio-v1":
        return crop_radio_v1(gt_frames, pred_frames, gt_landmarks, **kwargs)
    if protocol == "dinet":
        return crop_dinet(gt_frames, pred_frames, gt_landmarks, **kwargs)
    raise ValueError(f"Expected protocol in {PROTOCOLS}. Got {protocol!r}.")


def landmarks_to_crop(info: dict, landmarks) -> np.ndarray:
    """Map full-frame landmarks (T, K, 2) into crop pixels with each frame's affine in ``info``."""
    lm = np.asarray(landmarks, dtype=np.float64)
    a = info["affines"]
    if lm.ndim != 3 or len(lm) != len(a) or lm.shape[-1] != 2:
        raise ValueError(f"Expected landmarks of shape ({len(a)}, K, 2). Got {lm.shape}.")
    return np.stack([apply_affine(a[t], lm[t]) for t in range(len(a))])
