"""Landmark backends (dlib, face_alignment) and the streaming face tracker.

The tracker's state machine (lost faces, jumps, cuts, two faces, segment caps, chunking) is tested
on synthetic frames with a tiny backend that "detects" white squares; the dlib backend and the
tracker's real behaviour are tested on the committed clips (first frames only, to stay fast).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import cv2
import decord
import numpy as np
import pytest

from preprocess.landmarks import (Detection, LandmarkBackend, LandmarkError, LandmarksConfig,
                                  build_backend, get_backend)
from preprocess.landmarks.base import box_iou, map_box_back
from preprocess.track import FaceTracker, TrackerConfig, search_scale, track_faces
from preprocess.weights import WeightsError, sha256_file

DATA = os.path.join(os.path.dirname(__file__), "data")


def read_clip(name: str, n: int) -> np.ndarray:
    vr = decord.VideoReader(os.path.join(DATA, name))
    return vr.get_batch(list(range(min(n, len(vr))))).asnumpy()


@pytest.fixture(scope="module")
def dlib_backend():
    return get_backend("dlib")


# ---- a backend that detects white squares (for the tracker's state machine) -----------------
TEMPLATE = np.random.default_rng(0).uniform(0.15, 0.85, size=(68, 2))


class SquareBackend(LandmarkBackend):
    """Faces are white squares: detect = connected white blobs; fit = a fixed 68-point template
    stretched over the white blob nearest the box (or over the box itself when there is none)."""
    name = "squares"
    min_face_px = 16.0

    def detect(self, frame_rgb):
        white = (frame_rgb.min(axis=2) > 127).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(white)
        out = []
        for x, y, w, h, area in stats[1:n]:
            if min(w, h) >= self.min_face_px:
                out.append(Detection(box=(x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5), score=1.0))
        return sorted(out, key=lambda d: -d.side)

    def fit(self, frame_rgb, box):
        x0, y0, x1, y1 = box
        m = 0.5 * (x1 - x0)
        h, w = frame_rgb.shape[:2]
        ox, oy = max(0, int(x0 - m)), max(0, int(y0 - m))
        region = frame_rgb[oy:min(h, int(x1 + m) + 1) if False else min(h, int(y1 + m) + 1),
                           ox:min(w, int(x1 + m) + 1)]
        dets = self.detect(np.ascontiguousarray(region))
        if dets:
            bx0, by0, bx1, by1 = map_box_back(dets[0].box, 1.0, (ox, oy))
        else:
            bx0, by0, bx1, by1 = x0, y0, x1, y1
        return (np.array([bx0, by0]) + TEMPLATE * [bx1 - bx0, by1 - by0]).astype(np.float32)


def square_frames(positions, size=60, hw=(240, 320), bg=(30, 30, 80), extra=None):
    """One frame per entry of ``positions`` ((x, y) top-left of the square, or None: no face)."""
    frames = np.empty((len(positions),) + hw + (3,), np.uint8)
    for i, p in enumerate(positions):
        frames[i] = bg if not callable(bg) else bg(i)
        if p is not None:
            x, y = p
            frames[i, y:y + size, x:x + size] = 255
        if extra is not None:
            extra(i, frames[i])
    return frames


def truth_landmarks(p, size=60):
    x, y = p
    return np.array([x - 0.5, y - 0.5]) + TEMPLATE * size


def run_tracker(frames, backend, chunk=16, **cfg):
    tracker = FaceTracker(backend, TrackerConfig(**cfg))
    segs = []
    for i in range(0, len(frames), chunk):
        segs += tracker.update(frames[i:i + chunk])
    segs += tracker.finish()
    return segs, tracker


def describe(segs):
    return [(s.start, s.stop, s.end_reason) for s in segs]


SQ = SquareBackend()


def test_square_moving_face_is_one_accurate_segment():
    pos = [(40 + i, 50 + i // 2) for i in range(60)]
    segs, tracker = run_tracker(square_frames(pos), SQ, min_segment_frames=10)
    assert describe(segs) == [(0, 60, "end")]
    err = np.abs(segs[0].landmarks - np.stack([truth_landmarks(p) for p in pos])).max()
    assert err < 0.01
    assert segs[0].landmarks.shape == (60, 68, 2) and segs[0].landmarks.dtype == np.float32
    assert segs[0].boxes.shape == (60, 4) and segs[0].scores.shape == (60,)
    assert segs[0].frame_size == (240, 320)
    # searched once, re-detected every 5 frames in a region, never on the full frame again
    assert tracker.stats.searches == 1 and tracker.stats.redetections == 11


def test_lost_face_ends_segment_at_last_detection_and_is_found_again():
    pos = [(100, 80)] * 40 + [None] * 40 + [(100, 80)] * 40
    segs, tracker = run_tracker(square_frames(pos), SQ, min_segment_frames=10)
    assert [s.end_reason for s in segs] == ["lost", "end"]
    first, second = segs
    # confirmed up to the last successful re-detection (frame 35); frames after it are dropped
    assert first.start == 0 and first.stop == 36
    assert 80 <= second.start < 85 and second.stop == 120
    assert tracker.stats.frames_dropped == 4 + 5  # 36..39 (face) + 40..44 (failed re-detections)


def test_jump_cut_ends_the_track_and_starts_a_new_one():
    pos = [(20, 20)] * 30 + [(220, 150)] * 30
    segs, _ = run_tracker(square_frames(pos, size=50), SQ, min_segment_frames=10)
    # re-detection at 30 finds the face elsewhere; after lost_patience more tries (31..35) the
    # track ends at its last confirmed frame (25) and a search on frame 35 starts the new track
    assert describe(segs) == [(0, 26, "jump"), (35, 60, "end")]
    assert np.abs(segs[1].landmarks[0] - truth_landmarks((220, 150), 50)).max() < 0.01


class LaggingBackend(SquareBackend):
    """A fit that never follows the image: landmarks stay wherever the box puts them."""
    def fit(self, frame_rgb, box):
        x0, y0, x1, y1 = box
        return (np.array([x0, y0]) + TEMPLATE * [x1 - x0, y1 - y0]).astype(np.float32)


def test_fast_motion_lagging_fit_is_recaptured_by_a_near_detection():
    # 8 px/frame: after 5 frames the stale box overlaps the face by IoU 0.2 < iou_min, but the
    # detection 0.67 box sides away has the same size, so the track continues from it
    pos = [(8 * i, 60) for i in range(30)]
    segs, _ = run_tracker(square_frames(pos), LaggingBackend(), min_segment_frames=10)
    assert describe(segs) == [(0, 30, "end")]
    for t in range(0, 30, 5):  # re-detected frames are re-fitted from the detection box
        assert np.abs(segs[0].landmarks[t] - truth_landmarks(pos[t])).max() < 2.0
    segs, _ = run_tracker(square_frames(pos), LaggingBackend(), min_segment_frames=1, near_max=0.5)
    assert segs[0].end_reason == "jump" and all(s.n_frames < 30 for s in segs)  # without the rule


def test_two_faces_main_face_is_the_largest():
    def small_face(i, frame):
        frame[150:190, 20:60] = 255  # a 40-px face that stays in view
    pos = [(180 + (i % 3), 60) for i in range(40)]
    segs, _ = run_tracker(square_frames(pos, size=80, extra=small_face), SQ, min_segment_frames=10)
    assert describe(segs) == [(0, 40, "end")]
    assert np.abs(segs[0].landmarks - np.stack([truth_landmarks(p, 80) for p in pos])).max() < 0.01


def test_segments_are_capped_and_continue():
    pos = [(40 + i, 60) for i in range(100)]
    segs, _ = run_tracker(square_frames(pos), SQ, max_segment_frames=40, min_segment_frames=10)
    assert describe(segs) == [(0, 40, "max_length"), (40, 80, "max_length"), (80, 100, "end")]
    lms = np.concatenate([s.landmarks for s in segs])
    assert np.abs(lms - np.stack([truth_landmarks(p) for p in pos])).max() < 0.01


def test_scene_cut_splits_segment():
    pos = [(100, 80)] * 60
    segs, tracker = run_tracker(square_frames(pos, bg=lambda i: (30, 30, 80) if i < 30 else (120, 90, 20)),
                                SQ, min_segment_frames=10)
    assert describe(segs) == [(0, 30, "cut"), (30, 60, "end")]
    assert tracker.stats.cuts == 1


def test_short_segments_are_dropped_and_counted():
    segs, tracker = run_tracker(square_frames([(100, 80)] * 10 + [None] * 40), SQ)
    assert segs == [] and tracker.stats.short_segments_dropped == 1


def test_open_landmarks_cover_the_frames_to_keep():
    pos = [(40 + i, 60) for i in range(50)]
    tracker = FaceTracker(SQ, TrackerConfig(max_segment_frames=40, min_segment_frames=10))
    assert tracker.open_landmarks()[0] == 0 and tracker.open_landmarks()[1].shape == (0, 68, 2)
    done = tracker.update(square_frames(pos[:45]))
    start, marks = tracker.open_landmarks()
    assert describe(done) == [(0, 40, "max_length")] and start == 40 and marks.shape == (5, 68, 2)
    np.testing.assert_allclose(marks[0], truth_landmarks(pos[40]), atol=2.0)  # frame 40's face
    done = tracker.update(square_frames(pos[45:])) + tracker.finish()
    assert describe(done) == [(40, 50, "end")]
    start, marks = tracker.open_landmarks()
    assert start == 50 and marks.shape == (0, 68, 2)


def test_chunking_does_not_change_the_result():
    pos = [(40 + i, 50) for i in range(30)] + [None] * 20 + [(60, 60)] * 50
    frames = square_frames(pos)
    ref, _ = run_tracker(frames, SQ, chunk=len(frames), min_segment_frames=10)
    for chunk in (1, 7):
        segs = list(track_faces((frames[i:i + chunk] for i in range(0, len(frames), chunk)), SQ,
                                TrackerConfig(min_segment_frames=10)))
        assert describe(segs) == describe(ref)
        for a, b in zip(segs, ref):
            np.testing.assert_array_equal(a.landmarks, b.landmarks)


def test_tracker_input_errors():
    tracker = FaceTracker(SQ)
    with pytest.raises(LandmarkError, match="RGB uint8"):
        tracker.update(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(LandmarkError, match="RGB uint8"):
        tracker.update(np.zeros((32, 32, 3), np.uint8))
    tracker.update(np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(LandmarkError, match="size changed"):
        tracker.update(np.zeros((2, 32, 40, 3), np.uint8))
    tracker.finish()
    with pytest.raises(LandmarkError, match="after finish"):
        tracker.update(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="min_segment_frames"):
        TrackerConfig(max_segment_frames=10, min_segment_frames=20)


# ---- backends ------------------------------------------------------------------------------
def test_get_backend_errors():
    with pytest.raises(LandmarkError, match="Unknown landmark backend 'mediapipe'"):
        get_backend("mediapipe")
    with pytest.raises(LandmarkError, match="Bad settings"):
        get_backend("dlib", no_such_option=1)
    with pytest.raises(LandmarkError, match="Unknown landmark backend"):
        build_backend(LandmarksConfig(backend="nope"))


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert abs(box_iou((0, 0, 10, 10), (5, 0, 15, 10)) - 1 / 3) < 1e-9


def test_dlib_detects_and_fits_a_real_face(dlib_backend):
    frame = read_clip("00015.mp4", 1)[0]
    dets = dlib_backend.detect(frame)
    assert len(dets) == 1 and dets[0].score > 0
    x0, y0, x1, y1 = dets[0].box
    assert 0 <= x0 < x1 <= 224 and 100 < x1 - x0 < 200
    lm = dlib_backend.fit(frame, dets[0].box)
    assert lm.shape == (68, 2) and lm.dtype == np.float32
    # eyes above the nose tip above the mouth, all inside the box's neighbourhood
    assert lm[36:48, 1].mean() < lm[30, 1] < lm[48:68, 1].mean()
    assert (lm[:, 0] > x0 - 20).all() and (lm[:, 0] < x1 + 20).all()
    assert dlib_backend.describe()["weights"]["shape_predictor_68_face_landmarks.dat"].startswith("fbdc2cb8")
    with pytest.raises(LandmarkError, match="uint8"):
        dlib_backend.detect(frame.astype(np.float32))
    with pytest.raises(LandmarkError, match="box"):
        dlib_backend.fit(frame, (10, 10, 5, 50))


def test_dlib_configured_predictor_is_checked(tmp_path):
    with pytest.raises(WeightsError, match="not found.*shape_predictor_68_face_landmarks.dat.bz2"):
        get_backend("dlib", predictor_uri=str(tmp_path / "missing.dat"), predictor_sha256="0" * 64)
    bogus = tmp_path / "bogus.dat"
    bogus.write_bytes(b"not a predictor")
    with pytest.raises(WeightsError, match="sha256"):
        get_backend("dlib", predictor_uri=str(bogus), predictor_sha256="0" * 64)


def test_face_alignment_missing_weights_names_file_and_how_to_get_it(tmp_path):
    with pytest.raises(WeightsError) as e:
        get_backend("face_alignment")
    msg = str(e.value)
    assert "2DFAN4" in msg and "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar" in msg
    assert "landmarks.face_alignment.fan_uri" in msg
    fan = tmp_path / "fan.pth"
    fan.write_bytes(b"x")
    with pytest.raises(WeightsError, match=r"s3fd.*s3fd-619a316812\.pth.*sfd_uri"):
        get_backend("face_alignment", fan_uri=str(fan), fan_sha256=sha256_file(str(fan)),
                    sfd_uri=str(tmp_path / "nope.pth"), sfd_sha256="0" * 64)
    # without a configured sha256, only a file carrying the published hash prefix is accepted
    with pytest.raises(WeightsError, match="published prefix 11f355bf06"):
        get_backend("face_alignment", fan_uri=str(fan), sfd_uri=str(fan))


def test_face_alignment_backend_runs_offline_with_random_weights(tmp_path):
    """RANDOM weights (seeded), written to tmp files with their sha256: checks the plumbing
    (no download, weights_only loading, shapes), not landmark quality."""
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    torch.manual_seed(0)
    fan_path, sfd_path = str(tmp_path / "fan_random.pth"), str(tmp_path / "sfd_random.pth")
    torch.save(FAN(4).state_dict(), fan_path)
    torch.save(s3fd().state_dict(), sfd_path)
    cfg = LandmarksConfig(backend="face_alignment")
    cfg.face_alignment.fan_uri, cfg.face_alignment.fan_sha256 = fan_path, sha256_file(fan_path)
    cfg.face_alignment.sfd_uri, cfg.face_alignment.sfd_sha256 = sfd_path, sha256_file(sfd_path)
    cfg.face_alignment.flip_input = False
    backend = build_backend(cfg)
    assert backend.name == "face_alignment"
    assert backend.weights == {"2DFAN4": sha256_file(fan_path), "s3fd": sha256_file(sfd_path)}
    frame = cv2.resize(read_clip("00015.mp4", 1)[0], (96, 96), interpolation=cv2.INTER_AREA)
    dets = backend.detect(frame)
    assert all(isinstance(d, Detection) and d.score > 0.5 for d in dets)
    lm = backend.fit(frame, (10.0, 8.0, 86.0, 90.0))
    assert lm.shape == (68, 2) and lm.dtype == np.float32 and np.isfinite(lm).all()
    # crop is centre ± 100·(w+h)/195 px: landmarks land inside it
    assert (np.abs(lm - [48.0, 49.0 - 82 * 0.12]).max()) < 100 * (76 + 82) / 195 + 1


# ---- the tracker on real clips -------------------------------------------------------------
def test_search_working_size_rule(dlib_backend):
    assert search_scale(224, 224, 80, 0.2) == 1.0
    assert search_scale(512, 512, 80, 0.2) == pytest.approx(0.78125)
    assert search_scale(1080, 1920, 80, 0.2) == pytest.approx(80 / 216)
    frame = read_clip("00015.mp4", 1)[0]
    quarter = cv2.resize(frame, (56, 56), interpolation=cv2.INTER_AREA)
    assert dlib_backend.detect(quarter) == []  # a fixed ¼ downscale loses 224² faces (~37 px)


def test_real_cut_between_two_clips(dlib_backend):
    frames = np.concatenate([read_clip("00015.mp4", 50), read_clip("00086.mp4", 50)])
    t = time.process_time()
    segs, tracker = run_tracker(frames, dlib_backend, chunk=64)
    dt = time.process_time() - t
    print(f"\n[track] 224² dlib: {len(frames) / dt:.0f} frames/s (CPU time), stats {tracker.stats}")
    assert describe(segs) == [(0, 50, "cut"), (50, 100, "end")]
    assert tracker.stats.searches == 2 and tracker.stats.cuts == 1
    assert (segs[0].scores > 0).all()


def test_real_two_faces_tracks_the_larger(dlib_backend):
    big = read_clip("00015.mp4", 30)
    small = np.stack([cv2.resize(f, (170, 170), interpolation=cv2.INTER_AREA) for f in read_clip("00086.mp4", 30)])
    canvas = np.zeros((30, 224, 420, 3), np.uint8)
    canvas[:, :, 196:] = big
    canvas[:, 27:197, :170] = small
    dets = dlib_backend.detect(canvas[0])
    assert len(dets) == 2  # both faces are detectable
    segs, _ = run_tracker(canvas, dlib_backend)
    assert describe(segs) == [(0, 30, "end")]
    assert (segs[0].landmarks[:, :, 0].mean(axis=1) > 196).all()


def test_faceless_clip_gives_no_track(tmp_path, dlib_backend):
    ffmpeg = shutil.which("ffmpeg")
    assert ffmpeg is not None, "ffmpeg not installed: scripts/setup.sh installs it"
    path = str(tmp_path / "noise.mp4")
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "color=c=gray:s=256x256:r=25:d=2",
                    "-vf", "noise=alls=60:allf=t+u", "-pix_fmt", "yuv420p", "-y", path], check=True)
    frames = decord.VideoReader(path).get_batch(list(range(50))).asnumpy()
    segs, tracker = run_tracker(frames, dlib_backend)
    assert segs == [] and tracker.stats.tracks == 0
    assert tracker.stats.searches == 10  # every search_every=5 frames, never a per-frame detector


class LaggingSquareBackend(SquareBackend):
    """Like dlib's predictor: the fit lands a third of the way from the true face towards the box
    it was given (so a box that lags a moving face gives landmarks that lag too)."""

    def fit(self, frame_rgb, box):
        true = super().fit(frame_rgb, box).astype(np.float64)
        x0, y0, x1, y1 = box
        given = np.array([x0, y0]) + TEMPLATE * [x1 - x0, y1 - y0]
        return (true + (given - true) / 3.0).astype(np.float32)


def test_refit_on_fast_motion_removes_the_lag_bias():
    # a face moving 6 px per frame (10 % of its side): past refit_motion (6 %) on every frame
    xs = [20 + 6 * i for i in range(30)]
    frames = square_frames([(x, 80) for x in xs])
    truth = np.array([[x - 0.5, 79.5] for x in xs])
    errs, fits = {}, {}
    for refit in (None, TrackerConfig().refit_motion):
        tracker = FaceTracker(LaggingSquareBackend(), TrackerConfig(redetect_every=0, refit_motion=refit,
                                                                    motion_redetect=1.0))
        seg = (tracker.update(frames) + tracker.finish())[0]
        origin = seg.landmarks[:, 0] - TEMPLATE[0] * 60  # the fitted square's top-left corner
        errs[refit] = np.abs(origin - truth[seg.start:seg.stop])[5:, 0].mean()  # along the motion
        fits[refit] = tracker.stats.fits
    assert errs[None] > 2.0            # one fit from the previous frame's box lags ~3 px
    assert errs[0.06] < errs[None] / 2  # re-fitting from the moved box removes most of it
    assert fits[0.06] > fits[None]     # at the cost of a second fit on moving frames
    # a still face (in frames that differ: a flickering background) is fitted once per frame
    still = FaceTracker(LaggingSquareBackend(), TrackerConfig(redetect_every=0))
    still.update(square_frames([(40, 80)] * 20, bg=lambda i: (30, 30, 80 + i % 2)))
    assert still.stats.fits == 20 and still.stats.repeats == 0


def test_repeated_frames_reuse_the_previous_result():
    # a 15 fps source at 25 fps: the decoder shows some source frames twice (pixel-identical)
    src = [(20 + 3 * i, 80) for i in range(15)]
    shown = [src[int(k * 15 / 25 + 0.5 - 1e-9)] for k in range(25)]
    frames = square_frames(shown)
    counting = FaceTracker(SquareBackend(), TrackerConfig(redetect_every=5, min_segment_frames=1))
    seg = (counting.update(frames) + counting.finish())[0]
    repeats = sum(shown[k] == shown[k - 1] for k in range(1, 25))
    assert counting.stats.repeats == repeats == 10
    assert counting.stats.fits <= 25 - repeats + 5  # no fit on a repeat (a few re-fits after detections)
    for k in range(1, 25):
        if shown[k] == shown[k - 1]:
            np.testing.assert_array_equal(seg.landmarks[k], seg.landmarks[k - 1])
    # nearly identical is not identical: one changed pixel runs the tracker as usual
    frames2 = frames.copy()
    for k in range(1, 25):
        if shown[k] == shown[k - 1]:
            frames2[k, 0, 0, 0] ^= 1
    other = FaceTracker(SquareBackend(), TrackerConfig(redetect_every=5, min_segment_frames=1))
    other.update(frames2)
    assert other.stats.repeats == 0 and other.stats.fits >= 25


def test_real_15fps_source_repeats_skip_the_fit(dlib_backend, tmp_path):
    """A 15 fps real clip decoded at 25 fps shows 2 of every 5 source frames twice: those repeats
    keep the previous landmarks without a fit, and the alignment stays as steady."""
    from conftest import CLIP, _x264, ffmpeg as run_ffmpeg
    from preprocess import align, video

    path = tmp_path / "fps15.mp4"
    run_ffmpeg("-i", f"file:{CLIP}", "-t", 4, "-vf", "fps=15", *_x264(), "-an", f"file:{path}")
    frames = video.read_frames(path)
    assert len(frames) == 100
    segs, tracker = run_tracker(frames, dlib_backend, chunk=32)
    st = tracker.stats
    print(f"\n[track] 15 fps source at 25 fps: {st.repeats} repeats, {st.fits} fits for {st.frames} frames")
    assert describe(segs) == [(0, 100, "end")]
    assert 35 <= st.repeats <= 45                  # 40 of 100 frames repeat their predecessor
    assert st.fits <= st.frames - st.repeats + 10  # no fit on a repeat
    lm = segs[0].landmarks
    rep = [k for k in range(1, 100) if np.array_equal(frames[k], frames[k - 1])]
    assert all(np.array_equal(lm[k], lm[k - 1]) for k in rep)
    crop_lm = np.stack([align.apply_affine(a, p) for a, p in
                        zip(align.segment_affines(lm).astype(np.float64), lm)])
    assert align.eye_jitter(crop_lm) < 0.8
