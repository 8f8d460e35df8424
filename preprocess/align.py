"""FFHQ-style face alignment for video: quad from 68 landmarks, temporal smoothing, affine warp.

Conventions
-----------
* Landmarks: (68, 2) float arrays, iBUG/300-W order, (x, y) in source pixels, pixel centres at
  integer coordinates.
* Quad: (4, 2) corners [top-left, bottom-left, bottom-right, top-right] of the crop square in
  source pixels (the order of the FFHQ reference script).
* Affine: 2×3 float32 matrix mapping source pixel coordinates to crop pixel coordinates
  (``cv2.warpAffine`` convention). The quad's corners land on the crop's outer pixel edges.
"""
from __future__ import annotations

import cv2
import numpy as np

CROP_SIZE = 192
# Where FFHQ alignment puts the eye midpoint and the mouth-corner midpoint in a 192 crop, in pixel-
# centre coordinates (the SPEC's ≈ (96, 91) and (96, 142)): the quad is centred on
# eye_avg + 0.1·eye_to_mouth and its half-side is 1.8·|eye_to_mouth| whenever that beats
# 2·|eye_to_eye| (frontal faces), so the eyes sit 0.1/3.6 of the side above the centre (95.5) and
# the mouth 0.9/3.6 below it. Wider eye spacing (a face turned up or down) moves both towards the
# centre by a few px.
CANONICAL_EYE_MID = (95.5, 95.5 - CROP_SIZE * 0.1 / 3.6)     # (95.5, 90.17)
CANONICAL_MOUTH_MID = (95.5, 95.5 + CROP_SIZE * 0.9 / 3.6)   # (95.5, 143.5)


def ffhq_quads(landmarks: np.ndarray) -> np.ndarray:
    """Per-frame FFHQ alignment quads (the FFHQ reference script's recipe, vectorised over frames).
    (T, 68, 2) -> (T, 4, 2) float64."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (68, 2):
        raise ValueError(f"Expected landmarks of shape (T, 68, 2). Got {lm.shape}.")
    eye_left = lm[:, 36:42].mean(axis=1)
    eye_right = lm[:, 42:48].mean(axis=1)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[:, 48] + lm[:, 54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - eye_to_mouth[:, ::-1] * [-1, 1]       # np.flipud of each 2-vector
    x /= np.hypot(x[:, 0], x[:, 1])[:, None]
    x *= np.maximum(np.hypot(*eye_to_eye.T) * 2.0, np.hypot(*eye_to_mouth.T) * 1.8)[:, None]
    y = x[:, ::-1] * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y], axis=1)


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """FFHQ alignment quad for one frame's 68 landmarks. (68, 2) -> (4, 2) float64."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"Expected landmarks of shape (68, 2). Got {lm.shape}.")
    return ffhq_quads(lm[None])[0]


def smooth_quads(quads: np.ndarray, window: int = 5, follow_px: float | None = None,
                 size: int = CROP_SIZE) -> np.ndarray:
    """Temporal smoothing of the quads: a ``window``-frame moving average, made exact for
    constant-velocity motion at the segment ends.

    Each frame takes the least-squares line through the corners of ``window`` consecutive frames
    (clipped to the segment) and evaluates it at that frame. In the interior the window is centred
    and this is the plain centred moving average; in the first and last ``window // 2`` frames it
    extrapolates instead of pulling the crop towards the interior (a shrinking average lags moving
    heads there). Averaging the corners averages centre, scale and rotation together (the quad is a
    similarity image of the unit square). ``window`` 1 returns the input unchanged.

    ``follow_px`` (optional): where the smoothed quad strays from the frame's own quad by more
    than ``follow_px`` crop pixels (largest corner distance, at ``size``), blend towards the frame's
    own quad, fully at twice that. Landmark noise stays below ~2 px, so steady clips are smoothed
    as before, while fast head motion (which a moving average lags by up to 20 px) stays centred.
    """
    q = np.asarray(quads, dtype=np.float64)
    n = len(q)
    if window <= 1 or n <= 2:
        return q.copy()
    w = min(window, n)
    t = np.arange(n, dtype=np.float64)
    lo = np.clip(np.arange(n) - window // 2, 0, n - w)
    hi = lo + w
    tt = t[:, None, None]
    cq = np.concatenate([np.zeros((1,) + q.shape[1:]), np.cumsum(q, axis=0)])
    ctq = np.concatenate([np.zeros((1,) + q.shape[1:]), np.cumsum(q * tt, axis=0)])
    mean_q = (cq[hi] - cq[lo]) / w
    mean_tq = (ctq[hi] - ctq[lo]) / w
    mean_t = (lo + hi - 1) / 2.0                  # mean of lo..hi-1
    var_t = (w * w - 1) / 12.0                    # variance of w consecutive integers
    slope = (mean_tq - mean_t[:, None, None] * mean_q) / var_t
    out = mean_q + slope * (t - mean_t)[:, None, None]
    if follow_px:
        side = np.linalg.norm(q[:, 3] - q[:, 0], axis=-1)
        dev = np.linalg.norm(out - q, axis=-1).max(axis=-1) / side * size
        w = np.clip(dev / follow_px - 1.0, 0.0, 1.0)[:, None, None]
        out = out + w * (q - out)
    return out


def quad_to_affine(quad: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """2×3 source→crop affine sending the quad's corners to the crop's outer pixel edges."""
    q = np.asarray(quad, dtype=np.float64)
    e = -0.5, size - 0.5
    src = np.float32([q[0], q[1], q[3]])
    dst = np.float32([[e[0], e[0]], [e[0], e[1]], [e[1], e[0]]])
    return cv2.getAffineTransform(src, dst).astype(np.float64)


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """Inverse of a 2×3 affine (crop→source for a source→crop matrix)."""
    return cv2.invertAffineTransform(np.asarray(affine, dtype=np.float64))


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (..., 2) points through a 2×3 affine."""
    a = np.asarray(affine, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    return p @ a[:, :2].T + a[:, 2]


def warp_face(frame: np.ndarray, affine: np.ndarray, size: int = CROP_SIZE,
              border: int = cv2.BORDER_REPLICATE, out: np.ndarray | None = None) -> np.ndarray:
    """Warp one frame to a size×size crop with a source→crop affine, anti-aliased when shrinking.

    When the crop is smaller than the face in the source (scale < 1), the covering region of the
    source is first area-resized so that the remaining warp is close to scale 1; bilinear warping
    alone would alias (shimmering hair and teeth on 1080p input).
    """
    a = np.asarray(affine, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(a[:, :2]))))
    if scale >= 0.8:
        return cv2.warpAffine(frame, a, (size, size), dst=out, flags=cv2.INTER_LINEAR, borderMode=border)
    h, w = frame.shape[:2]
    corners = apply_affine(invert_affine(a), np.array([[-0.5, -0.5], [-0.5, size - 0.5],
                                                       [size - 0.5, size - 0.5], [size - 0.5, -0.5]]))
    x0, y0 = np.floor(corners.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 2 or y1 - y0 < 2:  # crop entirely outside the frame: plain warp replicates edges
        return cv2.warpAffine(frame, a, (size, size), dst=out, flags=cv2.INTER_LINEAR, borderMode=border)
    region = frame[y0:y1, x0:x1]
    rw = max(1, int(round((x1 - x0) * scale)))
    rh = max(1, int(round((y1 - y0) * scale)))
    small = cv2.resize(region, (rw, rh), interpolation=cv2.INTER_AREA)
    sx, sy = rw / (x1 - x0), rh / (y1 - y0)
    # region pixel centre u maps to small pixel centre (u + 0.5) * s - 0.5
    to_small = np.array([[sx, 0, (0.5 * sx - 0.5) - x0 * sx], [0, sy, (0.5 * sy - 0.5) - y0 * sy]])
    a_small = a[:, :2] @ np.linalg.inv(to_small[:, :2])
    b_small = a[:, 2] - a_small @ to_small[:, 2]
    return cv2.warpAffine(small, np.hstack([a_small, b_small[:, None]]), (size, size), dst=out,
                          flags=cv2.INTER_LINEAR, borderMode=border)


def crop_shake(affines: np.ndarray, size: int = CROP_SIZE) -> float:
    """Spec's crop-shake figure: mean |Q[t+1] − 2Q[t] + Q[t−1]| of the crop corners mapped back to
    source pixels, divided by the crop side in source pixels, × ``size`` (output px / frame²)."""
    a = np.asarray(affines, dtype=np.float64)
    if len(a) < 3:
        return 0.0
    edge = np.array([[-0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5], [size - 0.5, -0.5]])
    q = np.stack([apply_affine(invert_affine(m), edge) for m in a])  # (T, 4, 2)
    side = np.linalg.norm(q[:, 3] - q[:, 0], axis=-1)  # source px
    d2 = np.linalg.norm(q[2:] - 2 * q[1:-1] + q[:-2], axis=-1).mean(axis=-1)
    return float(np.mean(d2 / side[1:-1] * size))


def eye_jitter(crop_landmarks: np.ndarray) -> float:
    """Mean frame-to-frame motion of the eye midpoint in crop pixels. (T, 68, 2) -> float."""
    lm = np.asarray(crop_landmarks, dtype=np.float64)
    if len(lm) < 2:
        return 0.0
    eyes = (lm[:, 36:42].mean(axis=1) + lm[:, 42:48].mean(axis=1)) * 0.5
    return float(np.linalg.norm(np.diff(eyes, axis=0), axis=-1).mean())


def segment_affines(landmarks: np.ndarray, window: int = 5, follow_px: float | None = 4.0,
                    size: int = CROP_SIZE) -> np.ndarray:
    """Per-frame source→crop affines of one face segment: FFHQ quads, smoothed over ``window``
    frames (see :func:`smooth_quads`; ``follow_px`` 4 leaves steady clips exactly as the plain
    moving average and keeps fast-moving faces centred), then one affine each.
    (T, 68, 2) -> (T, 2, 3) float32."""
    quads = smooth_quads(ffhq_quads(landmarks), window, follow_px, size)
    return np.stack([quad_to_affine(q, size) for q in quads]).astype(np.float32)


def alignment_stats(landmarks: np.ndarray, affines: np.ndarray, size: int = CROP_SIZE) -> dict:
    """The SPEC's alignment figures for one segment: crop shake, eye jitter, and where the eye and
    mouth midpoints land in the crop (mean and worst distance from the canonical points)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    crop = np.stack([apply_affine(a, p) for a, p in zip(np.asarray(affines, dtype=np.float64), lm)])
    eyes = (crop[:, 36:42].mean(axis=1) + crop[:, 42:48].mean(axis=1)) * 0.5
    mouth = (crop[:, 48] + crop[:, 54]) * 0.5
    c = (size - 1) / 2.0
    eye_err = np.linalg.norm(eyes - [c, c - size * 0.1 / 3.6], axis=1)
    mouth_err = np.linalg.norm(mouth - [c, c + size * 0.9 / 3.6], axis=1)
    return {"crop_shake": crop_shake(affines, size), "eye_jitter": eye_jitter(crop),
            "eye_mean": eyes.mean(axis=0).tolist(), "mouth_mean": mouth.mean(axis=0).tolist(),
            "eye_err_mean": float(eye_err.mean()), "eye_err_max": float(eye_err.max()),
            "mouth_err_mean": float(mouth_err.mean()), "mouth_err_max": float(mouth_err.max())}
