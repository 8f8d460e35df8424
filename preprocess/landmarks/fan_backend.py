"""face_alignment backend: FAN 2D landmarks (face_alignment 1.5.0's network) + its SFD detector.

``face_alignment.FaceAlignment`` downloads both networks at construction; this backend never does.
It builds the two networks from face_alignment's model classes and loads their state dicts with
``torch.load(weights_only=True)`` from configured files (any fsspec URI), each checked against a
sha256 by :func:`preprocess.weights.resolve_weights`. Pre- and post-processing follow
face_alignment 1.5.0 (``api.py``, ``detection/sfd``) with float instead of integer geometry.

The published files (fetch them on a machine with internet, copy them where workers can read):

* ``2DFAN4-11f355bf06.pth.tar`` — https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar
* ``s3fd-619a316812.pth`` — https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth

The hex part of each name is the start of the file's sha256 (torch.hub's convention). Configure
the full sha256 (``sha256sum FILE``); without one, a file is accepted only when its digest starts
with that published prefix.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from preprocess.landmarks.base import (Detection, LandmarkBackend, LandmarkError, check_box,
                                       check_frame)
from preprocess.weights import WeightsError, resolve_weights

FAN_URL = "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar"
SFD_URL = "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth"
FAN_SHA256_PREFIX = "11f355bf06"
SFD_SHA256_PREFIX = "619a316812"

# face_alignment 1.5.0 constants (utils.py, detection/sfd)
CROP_RESOLUTION = 256
HEATMAP_RESOLUTION = 64
REFERENCE_SCALE = 195.0
SCALE_FACTOR = 200.0
CENTER_Y_OFFSET = 0.12
SFD_MEAN_BGR = (104.0, 117.0, 123.0)
SFD_NMS_IOU = 0.3
SFD_CANDIDATE_PROB = 0.05


def _how_to_get(url: str, key: str) -> str:
    return (f"Download {url} on a machine with internet, copy it to a path or gs:// URI the "
            f"workers can read, and set landmarks.face_alignment.{key}_uri and "
            f"landmarks.face_alignment.{key}_sha256 (the output of `sha256sum` on the file).")


@dataclass
class FanConfig:
    fan_uri: str | None = None
    fan_sha256: str | None = None
    sfd_uri: str | None = None
    sfd_sha256: str | None = None
    device: str = "cpu"
    flip_input: bool = True          # average with the mirrored image's heatmaps (as face_alignment)
    detector_threshold: float = 0.5  # SFD probability threshold (face_alignment's filter_threshold)


def _load(uri: str | None, sha256: str | None, *, name: str, url: str, key: str, prefix: str):
    how = _how_to_get(url, key)
    resolved = resolve_weights(uri, sha256, name=name, how_to_get=how, allow_unverified=not sha256)
    if not sha256 and not resolved.sha256.startswith(prefix):
        raise WeightsError(f"{name}: no sha256 configured for {uri!r}, and its sha256 "
                           f"{resolved.sha256} does not start with the published prefix {prefix}. {how}")
    return resolved


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    order = np.argsort(-scores)
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]) + 1)
        h = np.maximum(0.0, np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]) + 1)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou]
    return keep


class FanBackend(LandmarkBackend):
    name = "face_alignment"
    min_face_px = 40.0  # SFD finds faces down to ~16 px (stride-4 anchors); 40 keeps its boxes precise

    def __init__(self, fan_uri: str | None = None, fan_sha256: str | None = None,
                 sfd_uri: str | None = None, sfd_sha256: str | None = None, device: str = "cpu",
                 flip_input: bool = True, detector_threshold: float = 0.5) -> None:
        super().__init__()
        fan_w = _load(fan_uri, fan_sha256, name="face_alignment FAN 2D landmarks (2DFAN4)",
                      url=FAN_URL, key="fan", prefix=FAN_SHA256_PREFIX)
        sfd_w = _load(sfd_uri, sfd_sha256, name="face_alignment SFD face detector (s3fd)",
                      url=SFD_URL, key="sfd", prefix=SFD_SHA256_PREFIX)
        import torch
        from face_alignment.detection.sfd.net_s3fd import s3fd
        from face_alignment.models import FAN

        self._torch = torch
        self.device = torch.device(device)
        self.flip_input = bool(flip_input)
        self.detector_threshold = float(detector_threshold)
        self._fan = FAN(4)
        self._sfd = s3fd()
        for net, res, label in ((self._fan, fan_w, "FAN"), (self._sfd, sfd_w, "SFD")):
            state = torch.load(res.path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            if not isinstance(state, dict):
                raise WeightsError(f"{label} weights {res.uri!r}: expected a state dict. Got {type(state).__name__}.")
            state = {k.removeprefix("module."): v for k, v in state.items()}
            try:
                net.load_state_dict(state)
            except RuntimeError as e:
                raise WeightsError(f"{label} weights {res.uri!r} do not fit face_alignment 1.5.0's "
                                   f"network: {e}") from e
            net.to(self.device).eval()
        self.weights = {"2DFAN4": fan_w.sha256, "s3fd": sfd_w.sha256}
        # face_alignment's left/right landmark pairs for the flipped pass
        from face_alignment.utils import shuffle_lr
        self._shuffle_lr = shuffle_lr

    # ---- detection (SFD) -------------------------------------------------------------------
    def detect(self, frame_rgb: np.ndarray) -> list[Detection]:
        b, s = sfd_candidates(self._sfd, check_frame(frame_rgb), self.device)
        if not len(b):
            return []
        keep = [i for i in _nms(b, s, SFD_NMS_IOU) if s[i] > self.detector_threshold]
        return [Detection(box=tuple(float(v) for v in b[i]), score=float(s[i])) for i in keep]

    # ---- landmarks (FAN) -------------------------------------------------------------------
    def fit(self, frame_rgb: np.ndarray, box) -> np.ndarray:
        torch = self._torch
        img = check_frame(frame_rgb)
        x0, y0, x1, y1 = check_box(box)
        center = np.array([(x0 + x1) / 2, (y0 + y1) / 2 - (y1 - y0) * CENTER_Y_OFFSET])
        side = SCALE_FACTOR * ((x1 - x0) + (y1 - y0)) / REFERENCE_SCALE  # source px of the crop
        s = CROP_RESOLUTION / side
        # source (pixel centres) -> crop (pixel centres): the crop's edges are centre ± side/2
        affine = np.array([[s, 0, (0.5 - center[0] + side / 2) * s - 0.5],
                           [0, s, (0.5 - center[1] + side / 2) * s - 0.5]])
        from preprocess.align import warp_face  # anti-aliased when the face is large
        crop = warp_face(img, affine, size=CROP_RESOLUTION, border=cv2.BORDER_CONSTANT)
        inp = torch.from_numpy(crop.astype(np.float32) / 255.0).permute(2, 0, 1)[None].to(self.device)
        with torch.no_grad():
            hm = self._fan(inp)[-1]
            if self.flip_input:
                hm_f = self._fan(inp.flip(-1))[-1]
                hm = hm + self._shuffle_lr(hm_f).flip(-1)
        hm = hm[0].float().cpu().numpy()
        if hm.shape != (68, HEATMAP_RESOLUTION, HEATMAP_RESOLUTION):
            raise LandmarkError(f"FAN: expected heatmaps (68, 64, 64). Got {hm.shape}.")
        pts = _heatmap_peaks(hm)  # heatmap coordinates, pixel edges
        src_edge = center - side / 2 + pts * (side / HEATMAP_RESOLUTION)
        return (src_edge - 0.5).astype(np.float32)


def sfd_candidates(net, img_rgb: np.ndarray, device) -> tuple[np.ndarray, np.ndarray]:
    """S3FD's candidate boxes (N, 4) [x1, y1, x2, y2] in ``img_rgb`` pixels and their face
    probabilities (N,), before any NMS: every anchor with probability > 0.05, decoded from its
    prior (stride 4·2^level, side 4·stride, variances 0.1 / 0.2), as face_alignment does."""
    import torch

    x = torch.from_numpy(img_rgb[:, :, ::-1].astype(np.float32) - np.float32(SFD_MEAN_BGR))
    with torch.no_grad():
        outs = net(x.permute(2, 0, 1)[None].to(device))
    boxes, scores = [], []
    for level in range(len(outs) // 2):
        prob = torch.softmax(outs[2 * level], dim=1)[0, 1].cpu().numpy()
        loc = outs[2 * level + 1][0].cpu().numpy()  # (4, h, w)
        stride = 2 ** (level + 2)
        ys, xs = np.nonzero(prob > SFD_CANDIDATE_PROB)
        if not len(ys):
            continue
        prior_c = np.stack([stride / 2 + xs * stride, stride / 2 + ys * stride], axis=1).astype(np.float64)
        prior_s = stride * 4.0
        l = loc[:, ys, xs].T.astype(np.float64)
        c = prior_c + l[:, :2] * 0.1 * prior_s
        wh = prior_s * np.exp(l[:, 2:] * 0.2)
        boxes.append(np.concatenate([c - wh / 2, c + wh / 2], axis=1))
        scores.append(prob[ys, xs].astype(np.float64))
    if not boxes:
        return np.zeros((0, 4)), np.zeros(0)
    return np.concatenate(boxes), np.concatenate(scores)


def _heatmap_peaks(hm: np.ndarray) -> np.ndarray:
    """Argmax of each heatmap plus face_alignment's quarter-pixel step towards the higher
    neighbour; (68, 2) in edge coordinates (pixel i spans [i, i+1])."""
    n, h, w = hm.shape
    flat = hm.reshape(n, -1).argmax(axis=1)
    py, px = np.divmod(flat, w)
    pts = np.stack([px, py], axis=1).astype(np.float64) + 0.5
    inner = (px > 0) & (px < w - 1) & (py > 0) & (py < h - 1)
    idx = np.nonzero(inner)[0]
    dx = hm[idx, py[idx], px[idx] + 1] - hm[idx, py[idx], px[idx] - 1]
    dy = hm[idx, py[idx] + 1, px[idx]] - hm[idx, py[idx] - 1, px[idx]]
    pts[idx, 0] += np.sign(dx) * 0.25
    pts[idx, 1] += np.sign(dy) * 0.25
    return pts
