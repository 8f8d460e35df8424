"""S3FD face boxes for Sync-C/D, as syncnet_python's ``run_pipeline.py`` detects them.

The official pipeline runs S3FD on **every frame** (``inference_video``) with
``detect_faces(image, conf_th=0.9, scales=[0.25])``: the RGB frame is resized by 0.25
(``cv2.resize``, bilinear), the network's candidates (face probability > 0.05, box decoded from
its prior with variances 0.1 / 0.2) go through a first NMS at IoU 0.3 (``Detect``, at most 750
kept), those with probability > 0.9 are kept and a second NMS at IoU 0.1 (``nms_``) leaves the
final boxes, mapped back to full-frame pixels by the frame-to-scaled size ratio. The boxes then go
to :func:`eval.metrics.face_track.shot_tracks` (``track_shot``).

The network and its weights are face_alignment's S3FD (``s3fd-619a316812.pth``, the same file as
the ``face_alignment`` landmark backend's ``sfd_uri``): its ``s3fd`` module and its input
convention (BGR minus (104, 117, 123)). The file is loaded with ``weights_only=True`` after its
sha256 is checked. Without it, Sync falls back to the landmark backend's tracker boxes and the
score row says so (``sync_box_source``).
"""
from __future__ import annotations

import cv2
import numpy as np

from preprocess.weights import WeightsError, resolve_weights

CONF_TH = 0.9         # run_pipeline.inference_video: detect_faces(conf_th=0.9)
IMAGE_SCALE = 0.25    # run_pipeline --facedet_scale
NMS_DETECT = 0.3      # Detect.nms_thresh
DETECT_TOP_K = 750    # Detect.top_k
NMS_TOP_K = 5000      # Detect.nms_top_k: candidates considered
NMS_FINAL = 0.1       # detect_faces: nms_(bboxes, 0.1)
MEAN_BGR = (104.0, 117.0, 123.0)
SFD_SHA256_PREFIX = "619a316812"
HOW_TO_GET = ("Download https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth (face_alignment's "
              "S3FD) on a machine with internet, copy it where workers can read it, and set sync.s3fd_uri and "
              "sync.s3fd_sha256 (or leave them unset: Sync then uses the landmark backend's tracker boxes).")


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy NMS, highest score first; IoU without the +1 pixel (syncnet_python's ``nms_``)."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]))
        h = np.maximum(0.0, np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]))
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou]
    return keep


class S3FD:
    """face_alignment's S3FD network with syncnet_python's detection settings."""

    def __init__(self, uri: str | None, sha256: str | None = None, *, device: str = "cpu",
                 conf_th: float = CONF_TH, scale: float = IMAGE_SCALE):
        import torch
        from face_alignment.detection.sfd.net_s3fd import s3fd

        w = resolve_weights(uri, sha256, name="S3FD face detector (s3fd-619a316812.pth)", how_to_get=HOW_TO_GET,
                            allow_unverified=not sha256)
        if not sha256 and not w.sha256.startswith(SFD_SHA256_PREFIX):
            raise WeightsError(f"S3FD: no sha256 configured for {uri!r}, and its sha256 {w.sha256} does not start "
                               f"with the published prefix {SFD_SHA256_PREFIX}. {HOW_TO_GET}")
        state = torch.load(w.path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise WeightsError(f"S3FD weights {uri!r}: expected a state dict. Got {type(state).__name__}.")
        self.net = s3fd()
        try:
            self.net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        except RuntimeError as e:
            raise WeightsError(f"S3FD weights {uri!r} do not fit face_alignment's s3fd network: {e}") from e
        self.device = torch.device(device)
        self.net.to(self.device).eval()
        self.sha256, self.conf_th, self.scale = w.sha256, float(conf_th), float(scale)

    def describe(self) -> str:
        return (f"s3fd every frame (syncnet_python: conf {self.conf_th:g}, scale {self.scale:g}, NMS "
                f"{NMS_DETECT:g}/{NMS_FINAL:g}; weights {self.sha256[:12]})")

    def detect(self, frame_rgb: np.ndarray) -> np.ndarray:
        """Face boxes of one (H, W, 3) uint8 RGB frame: (K, 5) [x1, y1, x2, y2, score], full-frame px."""
        from preprocess.landmarks.fan_backend import sfd_candidates

        h, w = frame_rgb.shape[:2]
        img = cv2.resize(frame_rgb, dsize=(0, 0), fx=self.scale, fy=self.scale, interpolation=cv2.INTER_LINEAR)
        sh, sw = img.shape[:2]
        b, s = sfd_candidates(self.net, img, self.device)  # Detect's candidates: p > 0.05, decoded
        if not len(b):
            return np.zeros((0, 5))
        top = np.argsort(-s, kind="stable")[:NMS_TOP_K]
        b, s = b[top], s[top]
        keep = nms(b, s, NMS_DETECT)[:DETECT_TOP_K]
        b, s = b[keep], s[keep]
        sure = s > self.conf_th
        b, s = b[sure], s[sure]
        keep = nms(b, s, NMS_FINAL)
        b = b[keep] * np.array([w / sw, h / sh, w / sw, h / sh])
        return np.concatenate([b, s[keep, None]], axis=1)
