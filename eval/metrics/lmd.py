"""LMD, landmark distance over the mouth (SPEC "Evaluation").

LMD = mean Euclidean distance between predicted-frame and ground-truth landmarks 48–67
(0-based iBUG order: the 20 mouth points), averaged over points and frames.

**Normalisation: none.** Both landmark sets must be in pixels of the 256×256 evaluation crop
(:mod:`eval.crop` returns each frame's source→crop affine to map full-frame landmarks there);
nothing is divided by face size, inter-ocular distance or crop side. The score row records this
via :data:`METADATA`.

>>> import numpy as np
>>> gt = np.zeros((2, 68, 2)); pred = gt.copy(); pred[..., 0] += 3.0; pred[..., 1] += 4.0
>>> lmd(pred, gt)
5.0
"""
from __future__ import annotations

import numpy as np

from ._checks import mean_of

MOUTH = slice(48, 68)
CROP_SIZE = 256

METADATA = {
    "name": "lmd",
    "higher_is_better": False,
    "is_differentiable": False,
    "unit": "px",
    "landmarks": "48-67 (0-based iBUG, mouth)",
    "space": f"pixels of the {CROP_SIZE}x{CROP_SIZE} evaluation crop",
    "normalisation": "none",
    "clip_reduction": "mean over mouth points and frames",
}


def _as_landmarks(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1:] != (68, 2):
        raise ValueError(f"Expected {name} of shape (68, 2) or (T, 68, 2). Got {np.shape(x)}.")
    return a


def _lmd_update(pred_landmarks, target_landmarks) -> tuple[float, int]:
    """Sum of mouth-point distances and the number of distances.

    pred_landmarks, target_landmarks: (T, 68, 2) (or (68, 2)) in crop pixels.
    A frame whose landmarks contain NaN (no face found) raises: drop or report it upstream.
    """
    p = _as_landmarks(pred_landmarks, "pred_landmarks")
    t = _as_landmarks(target_landmarks, "target_landmarks")
    if p.shape != t.shape:
        raise ValueError(f"Expected pred and target landmarks of the same shape. Got {p.shape} and {t.shape}.")
    d = np.linalg.norm(p[:, MOUTH] - t[:, MOUTH], axis=-1)
    if not np.all(np.isfinite(d)):
        raise ValueError("Expected finite landmarks. Got NaN/inf in frames "
                         f"{np.flatnonzero(~np.isfinite(d).all(axis=1)).tolist()}.")
    return float(d.sum()), int(d.size)


def _lmd_compute(total: float, n: int) -> float:
    return mean_of(total, n, "landmark distance")


def lmd_per_frame(pred_landmarks, target_landmarks) -> np.ndarray:
    """Mean mouth-point distance of every frame. (T, 68, 2) pair -> (T,)."""
    p = _as_landmarks(pred_landmarks, "pred_landmarks")
    t = _as_landmarks(target_landmarks, "target_landmarks")
    if p.shape != t.shape:
        raise ValueError(f"Expected pred and target landmarks of the same shape. Got {p.shape} and {t.shape}.")
    return np.linalg.norm(p[:, MOUTH] - t[:, MOUTH], axis=-1).mean(axis=1)


def lmd(pred_landmarks, target_landmarks) -> float:
    """Clip LMD in crop pixels: mean over the 20 mouth points and all frames."""
    return _lmd_compute(*_lmd_update(pred_landmarks, target_landmarks))
