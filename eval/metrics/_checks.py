"""Input checks shared by the metrics: one place for the "Expected … Got …" messages."""
from __future__ import annotations

import numpy as np


def as_frames(x, name: str, *, dtype=np.uint8, channels: int | None = 3) -> np.ndarray:
    """Return ``x`` as an (N, H, W, C) array; a single (H, W, C) image becomes N = 1.

    ``dtype`` None accepts any real dtype; otherwise the array must already have it (no silent
    casts: a float frame in [0, 1] scored as uint8 would give meaningless numbers).
    """
    a = np.asarray(x)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"Expected {name} of shape (H, W, C) or (N, H, W, C). Got {a.shape}.")
    if channels is not None and a.shape[-1] != channels:
        raise ValueError(f"Expected {name} with {channels} channels last (RGB, HWC). Got {a.shape}.")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"Expected {name} of dtype {np.dtype(dtype).name}. Got {a.dtype}.")
    if dtype is None and not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"Expected {name} of a real dtype. Got {a.dtype}.")
    return a


def same_shape(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"Expected pred and target of the same shape. Got {pred.shape} and {target.shape}.")


def mean_of(total: float, n: int, what: str = "frame") -> float:
    """The ``_compute`` half of a mean-over-items metric: summed statistics -> mean."""
    if n <= 0:
        raise ValueError(f"Expected at least one {what}. Got n={n}.")
    return total / n
