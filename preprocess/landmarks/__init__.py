"""Pluggable face detection + 68-point landmark backends.

>>> backend = get_backend("dlib")                      # offline default
>>> backend = get_backend("face_alignment", fan_uri=..., fan_sha256=..., sfd_uri=..., sfd_sha256=...)
>>> backend = build_backend(LandmarksConfig(backend="dlib"))   # from the preprocess config tree

Each backend loads its models once, in its constructor: build one per worker (a Beam DoFn's
``setup()``), never per element. Backend modules are imported lazily, so ``dlib`` or ``torch``
load only when that backend is built.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field

from preprocess.landmarks.base import (N_LANDMARKS, Detection, LandmarkBackend, LandmarkError,
                                       box_iou)
from preprocess.landmarks.dlib_backend import DlibConfig
from preprocess.landmarks.fan_backend import FanConfig

# name -> (module, class); aliases share an entry
_BACKENDS = {
    "dlib": ("preprocess.landmarks.dlib_backend", "DlibBackend"),
    "face_alignment": ("preprocess.landmarks.fan_backend", "FanBackend"),
    "fan": ("preprocess.landmarks.fan_backend", "FanBackend"),
}
BACKEND_NAMES = ("dlib", "face_alignment")


@dataclass
class LandmarksConfig:
    """The ``landmarks`` section of the preprocess config: which backend, and each one's settings."""
    backend: str = "dlib"
    dlib: DlibConfig = field(default_factory=DlibConfig)
    face_alignment: FanConfig = field(default_factory=FanConfig)


def get_backend(name: str, **cfg) -> LandmarkBackend:
    """Build the backend ``name`` ('dlib' or 'face_alignment'/'fan') with its keyword settings."""
    if name not in _BACKENDS:
        raise LandmarkError(f"Unknown landmark backend {name!r}. Expected one of {list(BACKEND_NAMES)}.")
    module, cls = _BACKENDS[name]
    backend_cls = getattr(importlib.import_module(module), cls)
    try:
        return backend_cls(**cfg)
    except TypeError as e:
        raise LandmarkError(f"Bad settings for landmark backend {name!r}: {e}") from e


def build_backend(config: LandmarksConfig) -> LandmarkBackend:
    """Build the backend a :class:`LandmarksConfig` names, with its own section's settings."""
    section = {"dlib": config.dlib, "face_alignment": config.face_alignment,
               "fan": config.face_alignment}.get(config.backend)
    if section is None:
        raise LandmarkError(f"Unknown landmark backend {config.backend!r}. "
                            f"Expected one of {list(BACKEND_NAMES)}.")
    return get_backend(config.backend, **dataclasses.asdict(section))


__all__ = ["BACKEND_NAMES", "N_LANDMARKS", "Detection", "DlibConfig", "FanConfig", "LandmarkBackend",
           "LandmarkError", "LandmarksConfig", "box_iou", "build_backend", "get_backend"]
