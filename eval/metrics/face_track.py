"""Face tracks and 224×224 SyncNet crops, cut as syncnet_python's ``run_pipeline.py`` cuts them.

Input: the full frames of the pasted-back 25 fps video and, per frame, the face boxes of a
detector (syncnet_python uses S3FD at 0.25 scale with confidence ≥ 0.9; the detector is the
caller's choice and is recorded in the score row). Defaults are the official ones
(:class:`TrackConfig`).

Tracking (``track_shot``): frames are visited in order; a track starts at the first unused box
and takes, per frame, the first unused box whose IoU with the track's last box is > 0.5, as long
as the gap since the track's last box is ≤ ``num_failed_det`` frames; tracks are built one after
another from the remaining boxes. A track is kept when it has **more than** ``min_track`` boxes
and ``max(mean width, mean height) > min_face_size`` after linear interpolation of the boxes over
the missed frames.

Cropping (``crop_video``): per frame, box half-size ``s = max(w, h)/2`` and centre (x, y), each
median-filtered over 13 frames with ``scipy.signal.medfilt`` (which zero-pads at the track ends,
as the official code does: the first and last 6 frames take the smaller values); the frame is
padded by ``int(s·(1 + 2·crop_scale))`` with value 110, and rows
``[y − s, y + s·(1 + 2·crop_scale))``, cols ``[x − s·(1 + crop_scale), x + s·(1 + crop_scale))``
(truncated to int in padded coordinates) are resized to 224×224 (bilinear, ``cv2.resize``).

Differences from the official pipeline, on purpose: no scene detection (a dubbed clip is one shot:
the whole clip is the shot), and the crops are used directly instead of being written to an
XVID .avi and re-read as JPEGs (the official route adds two lossy codecs).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.signal import medfilt


@dataclass(frozen=True)
class TrackConfig:
    """syncnet_python ``run_pipeline.py`` defaults."""
    crop_scale: float = 0.40
    min_track: int = 100        # a track needs more than this many frames
    min_face_size: float = 100  # px, max of the mean box width / height
    num_failed_det: int = 25    # missed detections allowed before a track stops
    iou_threshold: float = 0.5
    smooth_kernel: int = 13     # median filter length for box size and centre
    out_size: int = 224
    pad_value: int = 110
    frame_rate: int = 25


def iou(a, b) -> float:
    """IoU of two [x1, y1, x2, y2] boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _boxes_per_frame(boxes) -> list[list[np.ndarray]]:
    out = []
    for t, fb in enumerate(boxes):
        a = np.asarray(fb if fb is not None else np.zeros((0, 4)), dtype=np.float64)
        if a.ndim == 1 and a.size == 4:
            a = a[None]
        if a.ndim != 2 or a.shape[1] != 4:
            raise ValueError(f"Expected frame {t}'s boxes of shape (K, 4) [x1, y1, x2, y2]. Got {a.shape}.")
        out.append([row for row in a])
    return out


def shot_tracks(boxes, config: TrackConfig = TrackConfig()) -> tuple[list[dict], list[dict]]:
    """``track_shot`` of syncnet_python over one shot (the whole clip): ``(kept, dropped)``.

    boxes: a sequence over frames of (K_t, 4) arrays [x1, y1, x2, y2] in source pixels (K_t may be
    0, or None for no detection). ``kept``: ``{'frame': (L,) int, 'bbox': (L, 4) float}``,
    consecutive frames with linearly interpolated boxes. ``dropped``: ``{'n_boxes', 'reason'}``
    with reason ``'short'`` (``min_track`` boxes or fewer) or ``'small'`` (mean face size not over
    ``min_face_size``). A shot shorter than ``min_track`` frames has no tracks (``run_pipeline``
    skips it); it is reported as one ``'short'`` drop.

    The loop is the official one, including its quirks: the frame's face list is edited while it
    is iterated (the face after a taken one is skipped in that frame), a face in the same frame as
    the track's last may join it when their IoU is over the threshold, and a gap of more than
    ``num_failed_det`` frames ends the search in each later frame, not the track's pass.
    """
    remaining = _boxes_per_frame(boxes)
    if len(remaining) < config.min_track:
        return [], [{"n_boxes": sum(len(f) for f in remaining), "reason": "short"}]
    kept, dropped = [], []
    while True:
        track: list[tuple[int, np.ndarray]] = []
        for t, faces in enumerate(remaining):
            i = 0
            while i < len(faces):  # `for face in framefaces` with `framefaces.remove(face)` inside
                face = faces[i]
                i += 1
                if not track:
                    track.append((t, faces.pop(i - 1)))
                elif t - track[-1][0] <= config.num_failed_det:
                    if iou(face, track[-1][1]) > config.iou_threshold:
                        track.append((t, faces.pop(i - 1)))
                        continue
                else:
                    break
        if not track:
            return kept, dropped
        if len(track) <= config.min_track:
            dropped.append({"n_boxes": len(track), "reason": "short"})
            continue
        frame_num = np.array([t for t, _ in track])
        bboxes = np.stack([b for _, b in track])
        frame_i = np.arange(frame_num[0], frame_num[-1] + 1)
        bboxes_i = np.stack([np.interp(frame_i, frame_num, bboxes[:, j]) for j in range(4)], axis=1)
        size = max(np.mean(bboxes_i[:, 2] - bboxes_i[:, 0]), np.mean(bboxes_i[:, 3] - bboxes_i[:, 1]))
        if size > config.min_face_size:
            kept.append({"frame": frame_i, "bbox": bboxes_i})
        else:
            dropped.append({"n_boxes": len(track), "reason": "small"})


def build_tracks(boxes, config: TrackConfig = TrackConfig()) -> list[dict]:
    """The kept tracks of :func:`shot_tracks`."""
    return shot_tracks(boxes, config)[0]


def smooth_track(track: dict, config: TrackConfig = TrackConfig()) -> dict:
    """Median-filtered half-size ``s`` and centre ``x``, ``y`` of a track's boxes (each (L,))."""
    b = np.asarray(track["bbox"], dtype=np.float64)
    s = np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2
    k = config.smooth_kernel
    return {"s": medfilt(s, kernel_size=k), "x": medfilt((b[:, 0] + b[:, 2]) / 2, kernel_size=k),
            "y": medfilt((b[:, 1] + b[:, 3]) / 2, kernel_size=k)}


def crop_frames(frames, dets: dict, rows, config: TrackConfig = TrackConfig()) -> np.ndarray:
    """224×224 crops of ``frames`` (T', H, W, 3) uint8 (any channel order; it is kept), one per
    frame, with the smoothed dets (:func:`smooth_track`) at track rows ``rows`` (T',)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise ValueError(f"Expected frames uint8 of shape (T, H, W, 3). Got {frames.dtype} {frames.shape}.")
    cs = config.crop_scale
    crops = np.empty((len(frames), config.out_size, config.out_size, 3), np.uint8)
    for k, i in enumerate(rows):
        bs = dets["s"][i]
        bsi = int(bs * (1 + 2 * cs))
        padded = np.pad(frames[k], ((bsi, bsi), (bsi, bsi), (0, 0)), mode="constant",
                        constant_values=config.pad_value)
        my, mx = dets["y"][i] + bsi, dets["x"][i] + bsi
        face = padded[int(my - bs):int(my + bs * (1 + 2 * cs)), int(mx - bs * (1 + cs)):int(mx + bs * (1 + cs))]
        if face.size == 0:
            raise ValueError(f"Expected a non-empty face crop at track row {i}. Got box s={bs:.1f} at ({mx:.1f}, {my:.1f}).")
        crops[k] = cv2.resize(face, (config.out_size, config.out_size))
    return crops


def crop_track(frames, track: dict, config: TrackConfig = TrackConfig()) -> tuple[np.ndarray, dict]:
    """224×224 face crops of one track. frames: (T, H, W, 3) uint8 (any channel order; it is
    kept). Returns ``(crops (L, 224, 224, 3) uint8, smoothed dets)``."""
    frames = np.asarray(frames)
    dets = smooth_track(track, config)
    return crop_frames(frames[track["frame"]], dets, range(len(track["frame"])), config), dets


def track_audio(audio: np.ndarray, track: dict, sample_rate: int = 16000, frame_rate: int = 25) -> np.ndarray:
    """The audio samples of a track's frames, [first/fps, (last + 1)/fps) seconds."""
    spf = sample_rate / frame_rate
    start = int(round(track["frame"][0] * spf))
    end = int(round((track["frame"][-1] + 1) * spf))
    return np.asarray(audio)[start:end]
