"""Face detection + tracking over a video stream: one main face, 68 landmarks per frame, segments.

How it works (one :class:`FaceTracker` per video; feed it decoded RGB chunks in order)

* **Search** (no face tracked): the backend's detector runs on the whole frame shrunk to a
  *working size* chosen from the frame size: ``scale = min(1, min_face_px / (min_face_frac ·
  short_side))``, so that any face at least ``min_face_frac`` of the short side keeps at least the
  detector's ``min_face_px`` (80 px for dlib's HOG window). With the defaults (0.2, dlib): 224² and
  400² frames are searched at full size, 512² at 0.78, 1080p at 0.37 (short side 400). The largest
  face found becomes the main face, whoever speaks: the faces found of at least ``other_face_ratio``
  (0.5) × its size are counted (``FaceSegment.n_faces``: the most that one full-frame count within
  the segment found and another found again in the same place — counts run at its track's start,
  every ``count_every`` frames while tracking, and when a re-detection falls back to the whole
  frame; a detection scoring under ``other_face_score`` × the main face's is not counted, and a
  false detection such as a badge is seldom found twice anyway), so that a caller can refuse
  segments where another face may be the speaker. Without a face, the search repeats every
  ``search_every`` frames.
* **Tracking**: each frame is fitted once from a box in the *detector's* convention, predicted from
  the previous frame's landmarks through a per-track mapping (landmark centre/size of the rigid
  points 27–47 -> detector box), fitted on the track's detections and updated by EMA at each
  re-detection. Boxes drawn from landmark extents (a different convention) make dlib drift (SPEC
  pitfall). dlib's fit lands about a third of the way towards the box it was given, so under fast
  motion it lags the face: when the fitted box moved more than ``refit_motion`` box sides from the
  prediction, the frame is fitted again from the moved box. A frame pixel-identical to the previous
  one (a source under 25 fps resampled to 25 fps, a freeze) keeps the previous landmarks, no fit.
* **Re-detection**, every ``redetect_every`` frames or at once when the fit jumps (centre moves
  > ``motion_redetect`` box sides or the size changes > ``scale_redetect`` in one frame): the
  detector first runs on a tight region (the fitted box grown by ``confirm_margin`` per side,
  shrunk so the face is ``confirm_face_px``, 1.2 × min_face_px by default: a third of the wide
  region's cost); when that finds no face overlapping the track, when the track is already
  failing, or with ``confirm_margin`` None, on the wide region (grown by ``roi_margin`` per side,
  face at ``roi_face_px``, 1.5 × min_face_px by default); the full-frame search is the last
  fallback. A detection overlapping the tracked box (IoU >= ``iou_min``) confirms the track; so
  does, failing that, a face of similar size within ``near_max`` box sides (under fast motion the
  fit can lag or slide off the face while HOG still finds it). After a jump, or a merely near
  detection, the frame is re-fitted from the detection box. After a failed re-detection (no face, or
  faces only elsewhere) it retries on every frame; after more than ``lost_patience`` failures in a
  row the track ends, ``lost`` (no face) or ``jump`` (faces elsewhere: a jump cut, or a fit that
  slid off the face; a new search starts on that frame), and the frames after the track's last
  successful detection are dropped.
* **Segments** end at a scene cut (Bhattacharyya distance between HSV histograms of consecutive
  frames, sampled on a ``cut_size``² grid, > ``cut_threshold``; within a shot the test clips stay
  < 0.17, across clips > 0.73), when the face is lost, and after ``max_segment_frames`` (250 = 10 s at
  25 fps; the track continues into the next segment). Segments shorter than
  ``min_segment_frames`` are dropped (counted in :attr:`FaceTracker.stats`).

Per frame a segment holds: landmarks (68, 2) in source pixels, the tracked box (detector
convention, source pixels) and a score: **the score of the track's latest successful detection**
(dlib: HOG SVM margin; SFD: probability), carried forward between detections. Memory stays flat:
the tracker keeps no frames (only a reference to the previous one, to spot repeats), the current
segment's landmarks (at most ``max_segment_frames`` + ``redetect_every`` + ``lost_patience``
frames) and one small histogram.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from preprocess.landmarks.base import Detection, LandmarkBackend, LandmarkError, box_iou

RIGID = slice(27, 48)  # nose bridge, nose, eyes: the points that move with the head only

END_CUT, END_LOST, END_JUMP, END_MAX, END_STREAM = "cut", "lost", "jump", "max_length", "end"


@dataclass
class TrackerConfig:
    min_face_frac: float = 0.2       # search working size keeps faces of this × short side >= min_face_px
    search_every: int = 5            # frames between searches while no face is tracked
    redetect_every: int = 5          # frames between re-detections while tracking (0: only on jumps)
    roi_margin: float = 0.5          # re-detection region: tracked box grown by this × side per side
    roi_face_px: float | None = None  # face side at re-detection working size (None: 1.5 × min_face_px)
    confirm_margin: float | None = 0.25  # steady track, periodic re-detection: first a region this tight
    confirm_face_px: float | None = None  # ... with the face this size (None: 1.2 × min_face_px)
    motion_redetect: float = 0.15    # centre motion per frame, in box sides, that forces re-detection
    refit_motion: float | None = 0.06  # box motion per frame, in box sides, that re-fits from the moved box
    scale_redetect: float = 0.08     # |log size ratio| per frame that forces re-detection
    iou_min: float = 0.4             # a re-detection overlapping the tracked box this much continues it
    near_max: float = 0.75           # ... or, failing that, a same-size face this close (box sides)
    map_update: float = 0.3          # EMA weight of a re-detection in the box mapping (1: snap)
    lost_patience: int = 5           # failed re-detections in a row before the face is lost
    cut_threshold: float = 0.4       # HSV-histogram Bhattacharyya distance marking a scene cut
    cut_size: int = 64               # the cut detector samples about cut_size² pixels per frame
    max_segment_frames: int = 250    # segment cap (10 s at 25 fps)
    min_segment_frames: int = 25     # shorter segments are dropped
    other_face_ratio: float = 0.5    # FaceSegment.n_faces counts faces at least this × the main face's size
    count_every: int = 50            # frames between full-frame face counts while tracking (0: at searches only)
    other_face_score: float = 0.25   # ... and whose detection score is at least this × the main face's

    def __post_init__(self) -> None:
        if self.max_segment_frames < 1 or self.min_segment_frames < 1:
            raise ValueError("max_segment_frames and min_segment_frames must be >= 1.")
        if self.min_segment_frames > self.max_segment_frames:
            raise ValueError(f"min_segment_frames ({self.min_segment_frames}) exceeds "
                             f"max_segment_frames ({self.max_segment_frames}).")
        if not 0 < self.min_face_frac <= 1:
            raise ValueError(f"min_face_frac must be in (0, 1]. Got {self.min_face_frac}.")
        if not 0 < self.map_update <= 1:
            raise ValueError(f"map_update must be in (0, 1]. Got {self.map_update}.")
        if self.search_every < 1 or self.lost_patience < 0 or self.redetect_every < 0 or self.count_every < 0:
            raise ValueError("search_every >= 1, lost_patience >= 0, redetect_every >= 0 and count_every >= 0 "
                             "expected.")


@dataclass
class FaceSegment:
    """A continuous track of the main face: frames ``[start, stop)`` of the video."""
    start: int                 # index of the first frame (0-based, in the decoded 25 fps stream)
    landmarks: np.ndarray      # (n, 68, 2) float32, source pixels
    boxes: np.ndarray          # (n, 4) float32, x0 y0 x1 y1, detector convention, source pixels
    scores: np.ndarray         # (n,) float32, score of the track's latest detection
    end_reason: str            # cut | lost | jump | max_length | end
    frame_size: tuple[int, int]  # (height, width) of the source frames
    n_faces: int = 1           # faces (the main one included) of at least other_face_ratio × its size that
    #                            two full-frame counts within the segment found in the same place (counts:
    #                            its track's start, every count_every frames, re-detections' fallbacks)

    @property
    def n_frames(self) -> int:
        return len(self.landmarks)

    @property
    def stop(self) -> int:
        return self.start + self.n_frames


@dataclass
class TrackerStats:
    frames: int = 0
    frames_with_face: int = 0   # frames emitted in segments
    searches: int = 0           # full-frame detections at the search working size
    redetections: int = 0       # region detections while tracking
    fits: int = 0               # backend.fit calls
    cuts: int = 0
    tracks: int = 0
    segments: int = 0
    short_segments_dropped: int = 0
    frames_dropped: int = 0     # tracked frames discarded (lost face, short segment)
    repeats: int = 0            # frames identical to the previous one, given its result
    face_counts: int = 0        # full-frame detections while tracking, to count the faces in the picture


def rigid_frame(lm: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and size (RMS distance from the centre) of the rigid landmarks (nose, eyes): where a
    head is and how large, whatever the mouth and jaw do."""
    p = np.asarray(lm, dtype=np.float64)[RIGID]
    c = p.mean(axis=0)
    return c, float(np.sqrt(((p - c) ** 2).sum(axis=1).mean()))


def _mapping(lm: np.ndarray, box) -> np.ndarray:
    """Per-track box convention: box centre offset and size in units of the rigid-point radius."""
    c, s = rigid_frame(lm)
    x0, y0, x1, y1 = box
    return np.array([((x0 + x1) / 2 - c[0]) / s, ((y0 + y1) / 2 - c[1]) / s, (x1 - x0) / s, (y1 - y0) / s])


def _box_from(mapping: np.ndarray, lm: np.ndarray) -> np.ndarray:
    c, s = rigid_frame(lm)
    cx, cy = c + mapping[:2] * s
    hw, hh = mapping[2] * s / 2, mapping[3] * s / 2
    return np.array([cx - hw, cy - hh, cx + hw, cy + hh])


def _side(box) -> float:
    return float(np.sqrt(max(box[2] - box[0], 1e-6) * max(box[3] - box[1], 1e-6)))


def search_scale(height: int, width: int, min_face_px: float, min_face_frac: float) -> float:
    """Detection working scale for a full-frame search (never above 1)."""
    return float(min(1.0, min_face_px / (min_face_frac * min(height, width))))


def _shrink(img: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return np.ascontiguousarray(img)
    h, w = img.shape[:2]
    return cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


@dataclass
class _Track:
    mapping: np.ndarray
    landmarks: np.ndarray
    box: np.ndarray
    score: float
    det_box: np.ndarray      # the track's latest successful detection
    since_detection: int = 0
    misses: int = 0          # re-detections failed in a row
    elsewhere: bool = False  # the latest failed one found faces, but not on the track


@dataclass
class _Segment:
    start: int
    landmarks: list = field(default_factory=list)
    boxes: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    confirmed: int = 0  # frames up to the track's latest successful detection
    clean: int = 0      # frames before the current run of failed re-detections (when misses > 0)
    others: list = field(default_factory=list)  # per full-frame count: boxes of the other faces it found

    @property
    def n_faces(self) -> int:
        """1 + the most other faces that one count found *and* another count found again, where
        they were (IoU >= 0.3): a false detection (a badge, a poster) is seldom found twice."""
        best = 0
        for i, boxes in enumerate(self.others):
            seen = [b for b in boxes if any(box_iou(b, o) >= 0.3 for j, more in enumerate(self.others)
                                            if j != i for o in more)]
            best = max(best, len(seen))
        return 1 + best


class FaceTracker:
    """Streaming main-face tracker. ``update(chunk)`` -> segments finished so far; ``finish()``
    flushes at the end of the video. One instance per video; the backend can be shared."""

    def __init__(self, backend: LandmarkBackend, config: TrackerConfig | None = None) -> None:
        self.backend = backend
        self.config = config or TrackerConfig()
        self.stats = TrackerStats()
        self._t = 0
        self._size: tuple[int, int] | None = None
        self._prev_hist: np.ndarray | None = None
        self._track: _Track | None = None
        self._seg: _Segment | None = None
        self._search_wait = 0
        self._prev_frame: np.ndarray | None = None  # the last frame processed (a view, not a copy)
        self._out: list[FaceSegment] = []
        self._finished = False

    # ---- public -----------------------------------------------------------------------------
    def update(self, frames: np.ndarray) -> list[FaceSegment]:
        """Consume a chunk of RGB uint8 frames (n, H, W, 3); return the segments it completed."""
        if self._finished:
            raise LandmarkError("FaceTracker.update() after finish().")
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise LandmarkError(f"Expected RGB uint8 frames of shape (n, H, W, 3). "
                                f"Got {frames.shape} {frames.dtype}.")
        size = frames.shape[1:3]
        if self._size is None:
            self._size = (int(size[0]), int(size[1]))
        elif tuple(size) != self._size:
            raise LandmarkError(f"Frame size changed within a video: {self._size} then {tuple(size)}.")
        for frame in frames:
            self._step(np.ascontiguousarray(frame))
        out, self._out = self._out, []
        return out

    def finish(self) -> list[FaceSegment]:
        """End of the video: emit the open segment (without any frames awaiting re-detection)."""
        if not self._finished:
            self._finished = True
            if self._track is not None:
                self._end_track(END_STREAM)
        out, self._out = self._out, []
        return out

    @property
    def frames_seen(self) -> int:
        return self._t

    def open_landmarks(self) -> tuple[int, np.ndarray]:
        """``(start, landmarks)`` of the segment still open: its first frame index and the
        landmarks (n, 68, 2) float32, source pixels, of its frames so far, including frames
        awaiting confirmation (some may be dropped later). Lets a caller keep only the face
        regions of frames it will warp. With no open segment: ``(frames_seen, empty (0, 68, 2))``."""
        if self._seg is None or not self._seg.landmarks:
            return self._t, np.zeros((0, 68, 2), np.float32)
        return self._seg.start, np.stack(self._seg.landmarks)

    # ---- per frame ----------------------------------------------------------------------------
    def _step(self, frame: np.ndarray) -> None:
        cfg = self.config
        # a repeated frame (a source under 25 fps, or a freeze) keeps the previous frame's
        # landmarks without a fit; re-detection runs on schedule as on any frame
        repeat = self._track is not None and self._repeats(frame)
        if repeat:
            self.stats.repeats += 1
        else:
            hist = self._histogram(frame)
            if self._prev_hist is not None and \
                    cv2.compareHist(self._prev_hist, hist, cv2.HISTCMP_BHATTACHARYYA) > cfg.cut_threshold:
                self.stats.cuts += 1
                if self._track is not None:
                    self._end_track(END_CUT)
                self._search_wait = 0
            self._prev_hist = hist

        if self._track is not None:
            self._follow(frame, repeat)
            if (self._track is not None and cfg.count_every > 0
                    and (self._t - self._seg.start) % cfg.count_every == cfg.count_every - 1):
                self.stats.face_counts += 1   # a second face may walk in while the track runs smoothly
                dets = self.faces(frame)
                self._seg.others.append(self._other_faces(dets, self._track.box, self._track.score))
        if self._track is None:  # not tracking, or the track just ended with a jump
            if self._search_wait <= 0:
                dets = self._search(frame)
                if dets:
                    main = max(dets, key=lambda d: (d.side, d.score))
                    self._start_track(frame, main)
                    self._seg.others.append(self._other_faces(dets, main.box, main.score))
                else:
                    self._search_wait = cfg.search_every - 1
            else:
                self._search_wait -= 1
        self._t += 1
        self.stats.frames += 1
        self._prev_frame = frame

    def _repeats(self, frame: np.ndarray) -> bool:
        """Whether ``frame`` is pixel-identical to the previous frame (a cheap strided sample
        first, so that a changed frame costs microseconds)."""
        prev = self._prev_frame
        if prev is None or prev.shape != frame.shape:
            return False
        return bool(np.array_equal(prev[::17, ::17], frame[::17, ::17]) and np.array_equal(prev, frame))

    def _follow(self, frame: np.ndarray, repeat: bool = False) -> None:
        cfg, tr = self.config, self._track
        if repeat:  # the same image as the previous frame: its landmarks stand
            lm, box, box_pred, jumped = tr.landmarks, tr.box, tr.box, False
        else:
            box_pred = _box_from(tr.mapping, tr.landmarks)
            lm = self._fit(frame, box_pred)
            box = _box_from(tr.mapping, lm)
            if cfg.refit_motion is not None and np.abs(box[:2] + box[2:] - box_pred[:2] - box_pred[2:]).max() / 2 \
                    > cfg.refit_motion * _side(box_pred):
                lm = self._fit(frame, box)
                box = _box_from(tr.mapping, lm)
            (c0, s0), (c1, s1) = rigid_frame(tr.landmarks), rigid_frame(lm)
            jumped = (np.hypot(*(c1 - c0)) / _side(box_pred) > cfg.motion_redetect
                      or abs(np.log(max(s1, 1e-6) / max(s0, 1e-6))) > cfg.scale_redetect)
        tr.since_detection += 1
        confirmed = False
        due = cfg.redetect_every > 0 and tr.since_detection >= cfg.redetect_every
        if jumped or due or tr.misses > 0:
            best = None
            if tr.misses == 0 and cfg.confirm_margin is not None:
                # a track whose fit is on the face only needs confirming: a tight region around the
                # fitted box, with the face just above the detector's minimum, costs a third of the
                # wide one; a miss or a merely near detection there takes the wide one
                face_px = cfg.confirm_face_px or 1.2 * self.backend.min_face_px
                dets = self._redetect(frame, box, cfg.confirm_margin, face_px, fallback=False)
                best, near = self._match(dets, (box, box_pred, tr.det_box))
                if near:
                    best = None
            if best is None:
                dets = self._redetect(frame, box)
                best, near = self._match(dets, (box, box_pred, tr.det_box))
            if best is not None:
                det_box = np.asarray(best.box, dtype=np.float64)
                if jumped or near or tr.misses > 0:  # the fit is suspect: restart from the detection
                    lm = self._fit(frame, det_box)
                    box, tr.mapping = det_box, _mapping(lm, det_box)
                else:  # the fit agrees with the detection: only learn the box convention from it
                    a = cfg.map_update
                    tr.mapping = (1 - a) * tr.mapping + a * _mapping(lm, det_box)
                    box = _box_from(tr.mapping, lm)
                tr.score, tr.since_detection, tr.misses, tr.det_box = best.score, 0, 0, det_box
                confirmed = True
            else:  # no detection, or only elsewhere (motion blur misleads HOG): retry next frame
                tr.misses += 1
                tr.elsewhere = bool(dets)
                if tr.misses == 1:
                    self._seg.clean = len(self._seg.landmarks)
                if tr.misses > cfg.lost_patience:
                    # faces only elsewhere: a jump cut (or a fit that slid off); else the face is gone
                    self._end_track(END_JUMP if tr.elsewhere else END_LOST)
                    self._search_wait = 0 if tr.elsewhere else cfg.search_every - 1
                    return
        tr.landmarks, tr.box = lm, box
        self._append(lm, box, tr.score, confirmed)

    def _match(self, dets: list[Detection], boxes) -> tuple[Detection | None, bool]:
        """The detection that continues the track, and whether it was taken as merely *near*.

        ``boxes``: the tracked box, the predicted one and the latest detection's. First choice:
        the best IoU with any of them, if >= ``iou_min``. Failing that, fast motion may have left
        the fit behind or slid it off the face: the closest detection of similar size (within
        ``near_max`` box sides of one of them, size ratio < 1.5) is taken."""
        cfg = self.config
        best, iou = None, 0.0
        for d in dets:
            o = max(box_iou(d.box, b) for b in boxes)
            if o > iou:
                best, iou = d, o
        if best is not None and iou >= cfg.iou_min:
            return best, False
        near, dist = None, np.inf
        for d in dets:
            dc = np.array([(d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2])
            for b in boxes:
                side = _side(b)
                r = np.hypot(*(dc - [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])) / side
                if r <= cfg.near_max and abs(np.log(d.side / side)) <= np.log(1.5) and r < dist:
                    near, dist = d, r
        return near, near is not None

    def _start_track(self, frame: np.ndarray, det: Detection) -> None:
        box = np.asarray(det.box, dtype=np.float64)
        lm = self._fit(frame, box)
        self._track = _Track(mapping=_mapping(lm, box), landmarks=lm, box=box, score=det.score, det_box=box)
        self._seg = _Segment(start=self._t)
        self.stats.tracks += 1
        self._append(lm, box, det.score, confirmed=True)

    def _append(self, lm: np.ndarray, box: np.ndarray, score: float, confirmed: bool) -> None:
        seg = self._seg
        seg.landmarks.append(np.asarray(lm, dtype=np.float32))
        seg.boxes.append(np.asarray(box, dtype=np.float32))
        seg.scores.append(np.float32(score))
        if confirmed:
            seg.confirmed = len(seg.landmarks)
        cap = self.config.max_segment_frames
        while seg.confirmed >= cap:  # split: the first `cap` confirmed frames go out, the track goes on
            self._emit(seg, cap, END_MAX)
            seg = self._seg = _Segment(start=seg.start + cap, landmarks=seg.landmarks[cap:],
                                       boxes=seg.boxes[cap:], scores=seg.scores[cap:],
                                       confirmed=seg.confirmed - cap)

    def _end_track(self, reason: str) -> None:
        """Close the track. Lost or jumped: keep the frames up to its last successful detection.
        Cut or end of stream: keep all frames, unless re-detection was failing (then up to the
        first failure)."""
        seg, tr = self._seg, self._track
        if reason in (END_LOST, END_JUMP):
            keep = seg.confirmed
        else:
            keep = seg.clean if tr.misses > 0 else len(seg.landmarks)
        self.stats.frames_dropped += len(seg.landmarks) - keep
        self._emit(seg, keep, reason)
        self._track, self._seg = None, None

    def _emit(self, seg: _Segment, n: int, reason: str) -> None:
        if n < self.config.min_segment_frames:
            if n > 0:
                self.stats.short_segments_dropped += 1
                self.stats.frames_dropped += n
            return
        self.stats.segments += 1
        self.stats.frames_with_face += n
        self._out.append(FaceSegment(
            start=seg.start, landmarks=np.stack(seg.landmarks[:n]), boxes=np.stack(seg.boxes[:n]),
            scores=np.asarray(seg.scores[:n], dtype=np.float32), end_reason=reason,
            frame_size=self._size, n_faces=max(1, seg.n_faces)))

    # ---- detection / fitting ------------------------------------------------------------------
    def _fit(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        self.stats.fits += 1
        lm = np.asarray(self.backend.fit(frame, box), dtype=np.float64)
        if lm.shape != (68, 2):
            raise LandmarkError(f"{self.backend.name}.fit: expected (68, 2) landmarks. Got {lm.shape}.")
        return lm

    def _detect(self, img: np.ndarray, scale: float, offset=(0.0, 0.0)) -> list[Detection]:
        if self.backend.detects_gray:  # convert before shrinking: a third of the pixels to shrink
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        return [d.scaled(scale, offset) for d in self.backend.detect(_shrink(img, scale))]

    def faces(self, frame: np.ndarray) -> list[Detection]:
        """Every face the full-frame search finds in ``frame`` (at the search working size, so a
        face of ``min_face_frac`` × the short side is found); no track is started or touched."""
        h, w = frame.shape[:2]
        return self._detect(frame, search_scale(h, w, self.backend.min_face_px, self.config.min_face_frac))

    def _search(self, frame: np.ndarray) -> list[Detection]:
        self.stats.searches += 1
        dets = self.faces(frame)
        if self._seg is not None and dets:  # a re-detection's fallback: the whole frame seen again
            self._seg.others.append(self._other_faces(dets, self._track.box, self._track.score))
        return dets

    def _other_faces(self, dets: list[Detection], main_box, main_score: float) -> list:
        """Boxes of the faces of ``dets`` other than the main one (``main_box``: IoU < 0.3 with it) of
        at least ``other_face_ratio`` × its size and ``other_face_score`` × its detection score (a
        badge on a jacket scored 0.04 against the face's 1.2 with dlib; a second real face 0.9-2.4
        against 2.1-3.8)."""
        cfg, side = self.config, _side(main_box)
        return [np.asarray(d.box, dtype=np.float64) for d in dets
                if box_iou(d.box, main_box) < 0.3 and d.side >= cfg.other_face_ratio * side
                and (main_score <= 0 or d.score >= cfg.other_face_score * main_score)]

    def _redetect(self, frame: np.ndarray, box: np.ndarray, margin: float | None = None,
                  face_px: float | None = None, fallback: bool = True) -> list[Detection]:
        """Detections in the region ``box`` grown by ``margin`` (default ``roi_margin``) sides per
        side, shrunk so the face is ``face_px`` (default ``roi_face_px``); with ``fallback``, the
        full-frame search when the region has none."""
        cfg = self.config
        self.stats.redetections += 1
        h, w = frame.shape[:2]
        side = _side(box)
        m = (cfg.roi_margin if margin is None else margin) * side
        x0, y0 = max(0, int(np.floor(box[0] - m))), max(0, int(np.floor(box[1] - m)))
        x1, y1 = min(w, int(np.ceil(box[2] + m))), min(h, int(np.ceil(box[3] + m)))
        dets: list[Detection] = []
        if x1 - x0 >= 8 and y1 - y0 >= 8:
            target = face_px or cfg.roi_face_px or 1.5 * self.backend.min_face_px
            scale = min(1.0, target / side)
            # a face cut by the region's edge (not the frame's) gets a truncated box: drop it and
            # let the full-frame search find the whole face
            tol = 1.0 / scale
            lo = [x0 + tol if x0 > 0 else -np.inf, y0 + tol if y0 > 0 else -np.inf]
            hi = [x1 - tol if x1 < w else np.inf, y1 - tol if y1 < h else np.inf]
            dets = [d for d in self._detect(frame[y0:y1, x0:x1], scale, (x0, y0))
                    if d.box[0] - 0.5 > lo[0] and d.box[1] - 0.5 > lo[1]
                    and d.box[2] + 0.5 < hi[0] and d.box[3] + 0.5 < hi[1]]
        return dets or (self._search(frame) if fallback else [])

    def _histogram(self, frame: np.ndarray) -> np.ndarray:
        # strided decimation to about cut_size² pixels: a colour histogram needs a sample of the
        # pixels, not a filtered image (a full-frame resize cost ~5 ms per 1080p frame)
        step = max(1, min(frame.shape[:2]) // self.config.cut_size)
        small = np.ascontiguousarray(frame[step // 2::step, step // 2::step])
        hist = cv2.calcHist([cv2.cvtColor(small, cv2.COLOR_RGB2HSV)], [0, 1, 2], None,
                            [16, 4, 4], [0, 180, 0, 256, 0, 256])
        return cv2.normalize(hist, hist).flatten()


def tracker_config(overrides: dict | None = None, *, where: str = "tracker", **fixed) -> TrackerConfig:
    """A TrackerConfig from a job's override mapping (unknown keys are errors), with ``fixed``
    values the caller needs (e.g. ``min_segment_frames=1`` to see every track) applied last."""
    from preprocess.config import from_dict

    return from_dict(TrackerConfig, {**(overrides or {}), **fixed}, where=where)


def track_faces(chunks: Iterable[np.ndarray], backend: LandmarkBackend,
                config: TrackerConfig | None = None) -> Iterator[FaceSegment]:
    """Generator over a video's face segments, from an iterable of (n, H, W, 3) RGB uint8 chunks
    (e.g. ``preprocess.video.iter_frames(path, fps=25)``)."""
    tracker = FaceTracker(backend, config)
    for chunk in chunks:
        yield from tracker.update(chunk)
    yield from tracker.finish()
