"""The landmark-backend interface: a face detector plus a 68-point landmark fitter.

Coordinates
-----------
All coordinates are continuous (x, y) in pixels of the frame given, with pixel *centres* at
integer coordinates (the convention of :mod:`preprocess.align`). A box is ``(x0, y0, x1, y1)``
with its *edges* at those coordinates, so a box covering pixels 10..19 is ``(9.5, ., 19.5, .)``.
Landmarks are (68, 2) float32 in iBUG/300-W order with 0-based indices (SPEC "Media conventions").

Box convention
--------------
Each fitter expects boxes drawn the way *its own detector* draws them (dlib's HOG box is tight on
brows-to-chin, SFD's is looser). A box derived from landmark extents is a different convention
and makes a fitter drift (SPEC "Alignment" pitfall); :mod:`preprocess.track` therefore only ever
fits from detector boxes or from a per-track mapping fitted to the detector's boxes.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

N_LANDMARKS = 68


class LandmarkError(RuntimeError):
    """A landmark backend cannot be built or used (unknown name, bad input)."""


@dataclass(frozen=True)
class Detection:
    """One detected face: a box ``(x0, y0, x1, y1)`` (edges, frame pixels) and the detector's score.

    Scores are the detector's own: dlib's HOG gives an SVM margin (0 = its default threshold,
    typically 0.3–3 on real faces); SFD a probability in [0, 1].
    """
    box: tuple[float, float, float, float]
    score: float

    @property
    def side(self) -> float:
        """Geometric mean of width and height."""
        x0, y0, x1, y1 = self.box
        return float(np.sqrt(max(x1 - x0, 0.0) * max(y1 - y0, 0.0)))

    def scaled(self, scale: float, offset: tuple[float, float] = (0.0, 0.0)) -> "Detection":
        """Map a detection found on ``resize(frame[oy:, ox:], scale)`` back to frame pixels."""
        return Detection(box=tuple(float(v) for v in map_box_back(self.box, scale, offset)),
                         score=self.score)


def map_points_back(points: np.ndarray, scale: float, offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Points on a crop ``frame[oy:, ox:]`` resized by ``scale`` -> frame pixels (centre convention)."""
    p = np.asarray(points, dtype=np.float64)
    return (p + 0.5) / scale - 0.5 + np.asarray(offset, dtype=np.float64)


def map_box_back(box, scale: float, offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    b = np.asarray(box, dtype=np.float64).reshape(2, 2)
    return map_points_back(b, scale, offset).reshape(4)


def box_iou(a, b) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return float(inter / union) if union > 0 else 0.0


def check_frame(frame: np.ndarray) -> np.ndarray:
    """Validate an RGB uint8 (H, W, 3) frame and return it C-contiguous."""
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
        raise LandmarkError(f"Expected an RGB frame of shape (H, W, 3). "
                            f"Got {getattr(frame, 'shape', type(frame))}.")
    if frame.dtype != np.uint8:
        raise LandmarkError(f"Expected a uint8 frame. Got {frame.dtype}.")
    return np.ascontiguousarray(frame)


def check_gray_or_rgb(frame: np.ndarray) -> np.ndarray:
    """Validate a grayscale (H, W) or RGB (H, W, 3) uint8 frame and return it C-contiguous."""
    if isinstance(frame, np.ndarray) and frame.ndim == 2:
        if frame.dtype != np.uint8:
            raise LandmarkError(f"Expected a uint8 frame. Got {frame.dtype}.")
        return np.ascontiguousarray(frame)
    return check_frame(frame)


def check_box(box) -> tuple[float, float, float, float]:
    b = tuple(float(v) for v in np.asarray(box, dtype=np.float64).reshape(-1))
    if len(b) != 4 or not np.all(np.isfinite(b)) or b[2] <= b[0] or b[3] <= b[1]:
        raise LandmarkError(f"Expected a box (x0, y0, x1, y1) with x1 > x0, y1 > y0. Got {box!r}.")
    return b


class LandmarkBackend(abc.ABC):
    """A face detector plus a 68-point landmark fitter; models load once, in the constructor.

    Build one per process (a Beam DoFn's ``setup()``), then call :meth:`detect` and :meth:`fit`
    per frame. Subclasses set :attr:`name`, :attr:`min_face_px` and :attr:`weights`.
    """

    #: registry name, recorded in datasets and score rows
    name: str = ""
    #: smallest face box side (px, in the image given to :meth:`detect`) the detector finds
    #: reliably; :mod:`preprocess.track` picks its detection working size from it
    min_face_px: float = 80.0
    #: :meth:`detect` also takes a grayscale (H, W) uint8 frame (and is faster on it); the
    #: tracker then converts before shrinking
    detects_gray: bool = False

    def __init__(self) -> None:
        #: weight file name -> sha256 of every file this backend loaded (for reports)
        self.weights: dict[str, str] = {}

    @abc.abstractmethod
    def detect(self, frame_rgb: np.ndarray) -> list[Detection]:
        """Faces in an RGB uint8 (H, W, 3) frame, best first; boxes in that frame's pixels."""

    @abc.abstractmethod
    def fit(self, frame_rgb: np.ndarray, box) -> np.ndarray:
        """68 landmarks, (68, 2) float32, for the face in ``box`` (drawn in this backend's
        detector convention) of an RGB uint8 frame."""

    def describe(self) -> dict:
        """Name and weight hashes, for run summaries and score rows."""
        return {"backend": self.name, "weights": dict(self.weights)}
