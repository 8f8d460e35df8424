"""Segment assembly: tracked face segments + cached face regions -> aligned 192×192 segments.

The tracker (``preprocess.track``) reports a segment only when it ends (up to 10 s later), so
the frames it covers must be held until then. Holding whole frames would cost 1.5 GB for a 10 s
1080p segment; instead :class:`RegionCache` keeps, per tracked frame, only the region around the
face, shrunk so the face keeps ~1.5× the crop's resolution (the anti-aliasing pre-shrink the warp
would do anyway). Memory is then flat in video length and small per segment (~100–200 MB worst
case for 1080p, a few MB for 224² clips).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from preprocess import align


@dataclass
class Region:
    image: np.ndarray   # (h, w, 3) uint8: frame[y0:y1, x0:x1] resized by `scale`
    x0: int
    y0: int
    scale_x: float
    scale_y: float

    def to_region(self) -> np.ndarray:
        """3×3 matrix: source pixel coordinates -> region-image pixel coordinates (centres)."""
        sx, sy = self.scale_x, self.scale_y
        return np.array([[sx, 0, (0.5 * sx - 0.5) - self.x0 * sx],
                         [0, sy, (0.5 * sy - 0.5) - self.y0 * sy],
                         [0, 0, 1]])


class RegionCache:
    """Per-frame face regions for the frames of open face tracks.

    ``margin``: region half-side in face-box sides (the FFHQ quad spans ~2 box sides, centred a
    little below the box centre; 2.0 leaves room for smoothing). ``detail``: the quad keeps at
    least ``detail`` × crop-size pixels across after shrinking.
    """

    def __init__(self, crop_size: int = align.CROP_SIZE, margin: float = 2.0, detail: float = 1.5):
        self.crop_size, self.margin, self.detail = crop_size, margin, detail
        self._regions: dict[int, Region] = {}

    def __len__(self) -> int:
        return len(self._regions)

    def nbytes(self) -> int:
        return sum(r.image.nbytes for r in self._regions.values())

    def add(self, t: int, frame: np.ndarray, box) -> None:
        if t in self._regions:
            return
        x0b, y0b, x1b, y1b = [float(v) for v in box]
        side = max(x1b - x0b, y1b - y0b, 1.0)
        cx, cy = (x0b + x1b) / 2, (y0b + y1b) / 2
        h, w = frame.shape[:2]
        r = self.margin * side
        x0, y0 = max(0, int(np.floor(cx - r))), max(0, int(np.floor(cy - r)))
        x1, y1 = min(w, int(np.ceil(cx + r))), min(h, int(np.ceil(cy + r)))
        if x1 - x0 < 2 or y1 - y0 < 2:
            x0, y0, x1, y1 = 0, 0, w, h
        scale = min(1.0, self.detail * self.crop_size / (2.0 * side))
        k = int(1.0 / scale)
        if k >= 2 and x1 - x0 >= 2 * k and y1 - y0 >= 2 * k:
            # whole-factor part first: INTER_AREA on an exact integer factor is cv2's fast block
            # average (~10x faster than its general path); the region is trimmed (< k px) to fit
            x1, y1 = x0 + (x1 - x0) // k * k, y0 + (y1 - y0) // k * k
            crop = cv2.resize(frame[y0:y1, x0:x1], ((x1 - x0) // k, (y1 - y0) // k), interpolation=cv2.INTER_AREA)
        else:
            crop = frame[y0:y1, x0:x1]
        if scale < 1.0:
            # the rest of the shrink (factor in (1/2, 1]) is bilinear: no source pixel is skipped
            nw, nh = max(2, int(round((x1 - x0) * scale))), max(2, int(round((y1 - y0) * scale)))
            img = crop if crop.shape[1::-1] == (nw, nh) else cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_LINEAR)
            self._regions[t] = Region(np.ascontiguousarray(img), x0, y0, nw / (x1 - x0), nh / (y1 - y0))
        else:
            self._regions[t] = Region(np.ascontiguousarray(crop), x0, y0, 1.0, 1.0)

    def get(self, t: int) -> Region:
        return self._regions[t]

    def drop_before(self, t: int) -> None:
        for k in [k for k in self._regions if k < t]:
            del self._regions[k]

    def drop(self, ts) -> None:
        for k in ts:
            self._regions.pop(k, None)


def warp_region(region: Region, affine: np.ndarray, size: int) -> np.ndarray:
    """Warp a cached region with a source->crop affine (composed with the region's own map)."""
    a = np.vstack([np.asarray(affine, np.float64), [0, 0, 1]])
    m = a @ np.linalg.inv(region.to_region())
    return align.warp_face(region.image, m[:2], size)


@dataclass
class AlignedSegment:
    start: int
    crops: np.ndarray        # (T, S, S, 3) uint8
    landmarks: np.ndarray    # (T, 68, 2) crop px
    affines: np.ndarray      # (T, 2, 3) source -> crop
    scores: np.ndarray       # (T,)
    outside: np.ndarray      # (T,) fraction of the crop outside the frame

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


def align_segment(start: int, landmarks: np.ndarray, scores: np.ndarray, cache: RegionCache,
                  frame_hw: tuple[int, int], size: int = align.CROP_SIZE, smooth_window: int = 5) -> AlignedSegment:
    """Smooth the segment's FFHQ quads over time and warp each cached frame to size×size."""
    affines = align.segment_affines(landmarks, smooth_window, size=size).astype(np.float64)
    crops = np.stack([warp_region(cache.get(start + i), affines[i], size) for i in range(len(affines))])
    crop_lm = np.stack([align.apply_affine(affines[i], landmarks[i]) for i in range(len(affines))])
    outside = np.array([outside_fraction(a, frame_hw, size) for a in affines])
    return AlignedSegment(start=start, crops=crops, landmarks=crop_lm.astype(np.float32),
                          affines=affines.astype(np.float32), scores=np.asarray(scores, np.float32),
                          outside=outside)
