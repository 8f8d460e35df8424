"""Streaming segment assembly: tracked frames in, aligned 192×192 segments out.

The tracker reports, frame by frame, the landmarks of the main face and the segment that frame
belongs to. This stage smooths the FFHQ quads over a centred window within each segment and warps
each frame as soon as its window is complete, so only ``window // 2`` full-resolution frames are
held at any time: memory is flat in video length and in segment length (crops are 192², small).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from preprocess import align


@dataclass
class TrackedFrame:
    """One frame of the main face track. ``index`` counts 25 fps frames from the video's start."""
    index: int
    frame: np.ndarray            # (H, W, 3) uint8 RGB, full resolution
    landmarks: np.ndarray        # (68, 2) float32, source px
    score: float                 # detector score (see preprocess.track)
    segment: int                 # segment number; a change starts a new segment


@dataclass
class AlignedSegment:
    segment: int
    start_frame: int
    crops: list = field(default_factory=list)        # (S, S, 3) uint8
    landmarks: list = field(default_factory=list)    # (68, 2) crop px
    raw_landmarks: list = field(default_factory=list)  # (68, 2) source px
    affines: list = field(default_factory=list)      # (2, 3) source -> crop
    scores: list = field(default_factory=list)
    outside: list = field(default_factory=list)      # fraction of the crop outside the frame
    source_hw: tuple = (0, 0)

    def __len__(self) -> int:
        return len(self.crops)


def outside_fraction(affine: np.ndarray, hw: tuple[int, int], size: int) -> float:
    """Fraction of the crop square whose source pixels fall outside the frame (sampled 16×16)."""
    g = (np.arange(16) + 0.5) * size / 16 - 0.5
    pts = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    src = align.apply_affine(align.invert_affine(affine), pts)
    h, w = hw
    inside = (src[:, 0] >= -0.5) & (src[:, 0] <= w - 0.5) & (src[:, 1] >= -0.5) & (src[:, 1] <= h - 0.5)
    return float(1.0 - inside.mean())


class SegmentAssembler:
    """Feed ``TrackedFrame``s in order; completed ``AlignedSegment``s come out."""

    def __init__(self, size: int = align.CROP_SIZE, smooth_window: int = 5):
        if smooth_window < 1 or smooth_window % 2 == 0:
            raise ValueError(f"Expected an odd smoothing window >= 1. Got {smooth_window}.")
        self.size, self.window, self.half = size, smooth_window, smooth_window // 2
        self._seg: AlignedSegment | None = None
        self._pending: deque[TrackedFrame] = deque()   # frames not yet warped
        self._quads: deque[np.ndarray] = deque()       # raw quads of the last window frames (+pending)
        self._quad_offset = 0                          # frame count of the segment before _quads[0]

    def push(self, tf: TrackedFrame) -> Iterator[AlignedSegment]:
        if self._seg is not None and (tf.segment != self._seg.segment or
                                      tf.index != self._seg.start_frame + len(self._seg) + len(self._pending)):
            yield from self.flush()
        if self._seg is None:
            self._seg = AlignedSegment(segment=tf.segment, start_frame=tf.index, source_hw=tf.frame.shape[:2])
            self._quads.clear()
            self._quad_offset = 0
        self._pending.append(tf)
        self._quads.append(align.ffhq_quad(tf.landmarks))
        while len(self._pending) > self.half:
            self._emit_one(final=False)

    def flush(self) -> Iterator[AlignedSegment]:
        while self._pending:
            self._emit_one(final=True)
        if self._seg is not None and len(self._seg):
            yield self._seg
        self._seg = None
        self._quads.clear()

    def _emit_one(self, final: bool) -> None:  # noqa: ARG002 (final: the window is truncated)
        seg = self._seg
        tf = self._pending.popleft()
        t = len(seg)                          # position of tf in the segment
        k = t - self._quad_offset             # position of tf in self._quads
        # same rule as align.smooth_quads: centred window, truncated at the segment's ends
        lo, hi = max(0, k - self.half), min(len(self._quads), k + self.half + 1)
        quad = np.mean(list(self._quads)[lo:hi], axis=0)
        affine = align.quad_to_affine(quad, self.size)
        seg.crops.append(align.warp_face(tf.frame, affine, self.size))
        seg.affines.append(affine.astype(np.float32))
        seg.raw_landmarks.append(np.asarray(tf.landmarks, np.float32))
        seg.landmarks.append(align.apply_affine(affine, tf.landmarks).astype(np.float32))
        seg.scores.append(float(tf.score))
        seg.outside.append(outside_fraction(affine, tf.frame.shape[:2], self.size))
        while (t + 1 - self._quad_offset) > self.half:  # keep the half-window of past quads
            self._quads.popleft()
            self._quad_offset += 1
