"""PSNR on uint8 RGB frames (SPEC "Evaluation"; paper Table 1).

Functional core in the torchmetrics manner: ``_psnr_update`` turns a batch into sufficient
statistics, ``_psnr_compute`` turns statistics into scores, and the public functions run both.

Conventions
-----------
* Inputs are uint8 RGB, channels last: one frame (H, W, 3) or a clip (N, H, W, 3). Both arrays
  must have the same shape (the evaluation crop makes them 256×256).
* ``data_range`` is 255 (uint8); the squared error is computed in float64.
* **Cap.** Identical frames have MSE 0 and an infinite PSNR; Table 1 of the paper prints 100 for
  the ground truth, so every per-frame value is capped at :data:`PSNR_CAP` = 100 dB (a finite
  uint8 MSE never exceeds 100 dB below ~1.5e5 pixels per frame, so the cap only bites at MSE 0).
* **Clip score = mean of per-frame PSNRs** (each frame capped first). This is what the report
  uses (:func:`psnr`). It is *not* the PSNR of the clip's pooled MSE, which weights bad frames
  less; :func:`_psnr_compute` on summed statistics gives that one if ever wanted.

>>> import numpy as np
>>> a = np.zeros((4, 4, 3), np.uint8); b = a.copy(); b[0, 0, 0] = 255
>>> round(psnr(a, b), 4)  # MSE = 255² / 48
16.8124
>>> psnr(a, a)
100.0
"""
from __future__ import annotations

import cv2
import numpy as np

from ._checks import as_frames, same_shape

PSNR_CAP = 100.0
DATA_RANGE = 255.0

METADATA = {
    "name": "psnr",
    "higher_is_better": True,
    "is_differentiable": False,
    "unit": "dB",
    "input": "uint8 RGB crops (N, H, W, 3)",
    "data_range": DATA_RANGE,
    "cap_db": PSNR_CAP,
    "clip_reduction": "mean of per-frame PSNR (each capped)",
}


def _psnr_update(pred, target) -> tuple[np.ndarray, int]:
    """Per-frame sum of squared errors and the number of values per frame.

    pred, target: uint8 (H, W, C) or (N, H, W, C), same shape.
    Returns ``(sse, n)``: sse float64 of shape (N,), n = H·W·C.
    """
    p = as_frames(pred, "pred")
    t = as_frames(target, "target")
    same_shape(p, t)
    # Per frame |p - t| in uint8, then a float64 dot product: every partial sum is an integer
    # below 2^53, so the result is exact (the same as any float64 summation order), without a
    # float64 copy of the whole clip.
    sse = np.empty(len(p), np.float64)
    for i in range(len(p)):
        d = cv2.absdiff(np.ascontiguousarray(p[i]), np.ascontiguousarray(t[i])).astype(np.float64).ravel()
        sse[i] = np.dot(d, d)
    return sse, int(np.prod(p.shape[1:]))


def _psnr_compute(sse, n, data_range: float = DATA_RANGE, cap: float = PSNR_CAP) -> np.ndarray:
    """PSNR from squared-error statistics, elementwise, capped at ``cap`` dB.

    sse: float or (N,) array; n: int or (N,) array of value counts. Returns float64 like ``sse``.
    """
    sse = np.asarray(sse, dtype=np.float64)
    mse = sse / np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore"):
        val = 10.0 * np.log10(data_range ** 2 / mse)
    return np.minimum(val, cap)


def psnr_per_frame(pred, target) -> np.ndarray:
    """Capped PSNR of every frame. uint8 (N, H, W, 3) pair -> float64 (N,)."""
    sse, n = _psnr_update(pred, target)
    return _psnr_compute(sse, n)


def psnr(pred, target) -> float:
    """Clip PSNR: mean over frames of the capped per-frame PSNR (dB).

    pred, target: uint8 (H, W, 3) or (N, H, W, 3).
    """
    return float(psnr_per_frame(pred, target).mean())
