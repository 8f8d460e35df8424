"""Segment assembly: tracked face segments + cached face regions -> aligned 192×192 segments.

The tracker (``preprocess.track``) reports a segment only when it ends (up to 10 s later), so
the frames it covers must be held until then. Holding whole frames would cost 1.5 GB for a 10 s
1080p segment; instead :class:`RegionCache` keeps, per tracked frame, only the region the frame's
own FFHQ quad covers (plus the few pixels temporal smoothing can move it), shrunk by a whole
factor when the face is at least twice the crop size. Memory is then flat in video length and
small per segment (at most ~0.6 MB a frame, ~150 MB for a 250-frame segment at any resolution).
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


def shrink_factor(quad_side: float, crop_size: int, lo: float = 0.8, hi: float = 1.1) -> int:
    """Whole factor k to block-average a face region by before warping a quad of ``quad_side``
    source px to ``crop_size``: the k (among floor/ceil of the ratio) that leaves a warp scale in
    [lo, hi] (bilinear is then alias-free and loses <= 10 % detail), else floor (the warp then
    anti-aliases what remains, see ``align.warp_face``). Never coarser than the crop needs."""
    f = max(quad_side / crop_size, 1.0)
    for k in (int(np.floor(f)), int(np.ceil(f))):
        if k >= 1 and lo <= k / f <= hi:
            return k
    return max(1, int(np.floor(f)))


class RegionCache:
    """Per-frame face regions for the frames of open face tracks.

    ``add(t, frame, landmarks)`` keeps the bounding box of the frame's own (unsmoothed) FFHQ quad,
    grown by ``margin`` × its side + 2 px per side: the smoothed quad that is warped later strays
    from the frame's own by at most 2 × ``segment_affines``' ``follow_px`` (8 crop px, 4 % of the
    side) before it is pulled back, and the warp replicates edges beyond the region. When the quad
    is about k ≥ 2 times the crop size the region is block-averaged by k (cv2's fast whole-factor
    INTER_AREA), see :func:`shrink_factor`.
    """

    def __init__(self, crop_size: int = align.CROP_SIZE, margin: float = 0.06):
        self.crop_size, self.margin = crop_size, margin
        self._regions: dict[int, Region] = {}

    def __len__(self) -> int:
        return len(self._regions)

    def nbytes(self) -> int:
        return sum(r.image.nbytes for r in self._regions.values())

    def add(self, t: int, frame: np.ndarray, landmarks) -> None:
        if t in self._regions:
            return
        quad = align.ffhq_quad(landmarks)
        side = float(np.linalg.norm(quad[3] - quad[0]))
        pad = self.margin * side + 2.0
        lo, hi = quad.min(axis=0) - pad, quad.max(axis=0) + pad
        h, w = frame.shape[:2]
        x0, y0 = max(0, int(np.floor(lo[0]))), max(0, int(np.floor(lo[1])))
        x1, y1 = min(w, int(np.ceil(hi[0])) + 1), min(h, int(np.ceil(hi[1])) + 1)
        if x1 - x0 < 2 or y1 - y0 < 2:  # the quad lies outside the frame: keep its nearest edge
            x0, y0 = min(max(x0, 0), w - 2), min(max(y0, 0), h - 2)
            x1, y1 = x0 + 2, y0 + 2
        k = shrink_factor(side, self.crop_size)
        if k >= 2 and x1 - x0 >= 2 * k and y1 - y0 >= 2 * k:
            # INTER_AREA on an exact whole factor is cv2's fast block average (~10x its general
            # path); the region is trimmed (< k px) to a multiple of k
            x1, y1 = x0 + (x1 - x0) // k * k, y0 + (y1 - y0) // k * k
            img = cv2.resize(frame[y0:y1, x0:x1], ((x1 - x0) // k, (y1 - y0) // k), interpolation=cv2.INTER_AREA)
            self._regions[t] = Region(img, x0, y0, 1.0 / k, 1.0 / k)
        else:
            self._regions[t] = Region(np.array(frame[y0:y1, x0:x1]), x0, y0, 1.0, 1.0)

    def get(self, t: int) -> Region:
        return self._regions[t]

    def drop_before(self, t: int) -> None:
        for k in [k for k in self._regions if k < t]:
            del self._regions[k]

    def drop(self, ts) -> None:
        for k in ts:
            self._regions.pop(k, None)


def warp_region(region: Region, affine: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Warp a cached region with a source->crop affine (composed with the region's own map),
    into ``out`` (a (size, size, 3) uint8 array) when given."""
    a = np.vstack([np.asarray(affine, np.float64), [0, 0, 1]])
    m = a @ np.linalg.inv(region.to_region())
    return align.warp_face(region.image, m[:2], size, out=out)


@dataclass
class AlignedSegment:
    start: int
    crops: np.ndarray        # (T, S, S, 3) uint8
    landmarks: np.ndarray    # (T, 68, 2) crop px
    affines: np.ndarray      # (T, 2, 3) source -> crop
    scores: np.ndarray       # (T,)
    outside: np.ndarray      # (T,) fraction of the crop outside the frame
    face_outside: np.ndarray  # (T,) fraction of the face (FACE_BOX of the crop) outside the frame
    features_outside: np.ndarray  # (T,) bool: an eye or mouth landmark lies outside the frame
    n_faces: int = 1         # faces of the main face's size in the picture (the tracker's FaceSegment.n_faces)

    def __len__(self) -> int:
        return len(self.crops)

    def part(self, a: int, b: int) -> "AlignedSegment":
        """Frames ``[a, b)`` of the segment (indexes within it) as a segment of their own."""
        return AlignedSegment(start=self.start + a, crops=self.crops[a:b], landmarks=self.landmarks[a:b],
                              affines=self.affines[a:b], scores=self.scores[a:b], outside=self.outside[a:b],
                              face_outside=self.face_outside[a:b], features_outside=self.features_outside[a:b],
                              n_faces=self.n_faces)


#: Where FFHQ alignment puts the face in its crop, in crop sides (x0, x1, y0, y1): cheek to cheek,
#: brows to chin (32..160 × 40..184 at 192). The crop square itself reaches well past the head:
#: on tightly framed talking heads a quarter of it lies outside the frame while the whole face is in.
FACE_BOX = (1 / 6, 5 / 6, 5 / 24, 23 / 24)


def outside_fraction(affines: np.ndarray, hw: tuple[int, int], size: int,
                     box: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)) -> np.ndarray:
    """Per frame, the fraction of the crop square (or of its ``box``: x0, x1, y0, y1 in crop sides)
    whose source pixels fall outside the frame (sampled 16×16). (T, 2, 3) source->crop affines -> (T,)."""
    a = np.asarray(affines, dtype=np.float64).reshape(-1, 2, 3)
    x0, x1, y0, y1 = box
    gx = (x0 + (np.arange(16) + 0.5) * (x1 - x0) / 16) * size - 0.5
    gy = (y0 + (np.arange(16) + 0.5) * (y1 - y0) / 16) * size - 0.5
    pts = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2)
    lin = a[:, :, :2]
    inv = np.linalg.inv(lin)                                   # crop -> source, per frame
    src = np.einsum("tij,pj->tpi", inv, pts) - np.einsum("tij,tj->ti", inv, a[:, :, 2])[:, None]
    h, w = hw
    inside = ((src[..., 0] >= -0.5) & (src[..., 0] <= w - 0.5) &
              (src[..., 1] >= -0.5) & (src[..., 1] <= h - 0.5))
    return 1.0 - inside.mean(axis=1)


def align_segment(start: int, landmarks: np.ndarray, scores: np.ndarray, cache: RegionCache,
                  frame_hw: tuple[int, int], size: int = align.CROP_SIZE, smooth_window: int = 5,
                  n_faces: int = 1) -> AlignedSegment:
    """Smooth the segment's FFHQ quads over time and warp each cached frame to size×size."""
    affines = align.segment_affines(landmarks, smooth_window, size=size).astype(np.float64)
    crops = np.empty((len(affines), size, size, 3), np.uint8)
    for i in range(len(affines)):
        warp_region(cache.get(start + i), affines[i], size, out=crops[i])
    lm = np.asarray(landmarks, dtype=np.float64)
    crop_lm = np.einsum("tij,tkj->tki", affines[:, :, :2], lm) + affines[:, None, :, 2]
    return AlignedSegment(start=start, crops=crops, landmarks=crop_lm.astype(np.float32),
                          affines=affines.astype(np.float32), scores=np.asarray(scores, np.float32),
                          outside=outside_fraction(affines, frame_hw, size),
                          face_outside=outside_fraction(affines, frame_hw, size, FACE_BOX),
                          features_outside=features_outside(lm, frame_hw), n_faces=int(n_faces))


def features_outside(landmarks: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Per frame, whether an eye or mouth landmark (36-67, source pixels) lies outside the frame.
    (T, 68, 2) -> (T,) bool."""
    p = np.asarray(landmarks, dtype=np.float64).reshape(-1, 68, 2)[:, 36:68]
    h, w = hw
    return ((p[..., 0] < -0.5) | (p[..., 0] > w - 0.5) | (p[..., 1] < -0.5) | (p[..., 1] > h - 0.5)).any(axis=1)
