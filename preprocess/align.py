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


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """FFHQ alignment quad for one frame's 68 landmarks. (68, 2) -> (4, 2) float64."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"Expected landmarks of shape (68, 2). Got {lm.shape}.")
    eye_left = lm[36:42].mean(axis=0)
    eye_right = lm[42:48].mean(axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def ffhq_quads(landmarks: np.ndarray) -> np.ndarray:
    """Per-frame quads. (T, 68, 2) -> (T, 4, 2)."""
    return np.stack([ffhq_quad(lm) for lm in np.asarray(landmarks)])


def smooth_quads(quads: np.ndarray, window: int = 5) -> np.ndarray:
    """Centred moving average of the quads over time, shrinking the window at the ends.

    Averaging the corners averages centre, scale and rotation together (the quad is a similarity
    image of the unit square, and the mean of similarities of one square stays a square up to the
    tiny rotation spread within the window). ``window`` 1 returns the input unchanged.
    """
    q = np.asarray(quads, dtype=np.float64)
    if window <= 1 or len(q) <= 1:
        return q.copy()
    half = window // 2
    csum = np.concatenate([np.zeros((1,) + q.shape[1:]), np.cumsum(q, axis=0)])
    t = np.arange(len(q))
    lo = np.clip(t - half, 0, len(q))
    hi = np.clip(t + half + 1, 0, len(q))
    return (csum[hi] - csum[lo]) / (hi - lo)[:, None, None]


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
              border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """Warp one frame to a size×size crop with a source→crop affine, anti-aliased when shrinking.

    When the crop is smaller than the face in the source (scale < 1), the covering region of the
    source is first area-resized so that the remaining warp is close to scale 1; bilinear warping
    alone would alias (shimmering hair and teeth on 1080p input).
    """
    a = np.asarray(affine, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(a[:, :2]))))
    if scale >= 0.8:
        return cv2.warpAffine(frame, a, (size, size), flags=cv2.INTER_LINEAR, borderMode=border)
    h, w = frame.shape[:2]
    corners = apply_affine(invert_affine(a), np.array([[-0.5, -0.5], [-0.5, size - 0.5],
                                                       [size - 0.5, size - 0.5], [size - 0.5, -0.5]]))
    x0, y0 = np.floor(corners.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 2 or y1 - y0 < 2:  # crop entirely outside the frame: plain warp replicates edges
        return cv2.warpAffine(frame, a, (size, size), flags=cv2.INTER_LINEAR, borderMode=border)
    region = frame[y0:y1, x0:x1]
    rw = max(1, int(round((x1 - x0) * scale)))
    rh = max(1, int(round((y1 - y0) * scale)))
    small = cv2.resize(region, (rw, rh), interpolation=cv2.INTER_AREA)
    sx, sy = rw / (x1 - x0), rh / (y1 - y0)
    # region pixel centre u maps to small pixel centre (u + 0.5) * s - 0.5
    to_small = np.array([[sx, 0, (0.5 * sx - 0.5) - x0 * sx], [0, sy, (0.5 * sy - 0.5) - y0 * sy]])
    a_small = a[:, :2] @ np.linalg.inv(to_small[:, :2])
    b_small = a[:, 2] - a_small @ to_small[:, 2]
    return cv2.warpAffine(small, np.hstack([a_small, b_small[:, None]]), (size, size),
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
