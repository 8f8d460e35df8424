"""The in-process PyAV decoder (the default, ``backend='auto'``) against the ffmpeg pipe.

Both must give the same 25 fps frames: same count, same timing (ffmpeg's ``fps`` filter rule),
same pixels (both convert with swscale), on the real clips and on the generated odd media.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from conftest import make_testsrc
from preprocess import video
from preprocess.media import MediaError, probe

REAL = ["00015.mp4", "00086.mp4", "liveportrait_d12.mp4", "retalking_face5.mp4"]


def _both(path, **kw):
    return video.read_frames(path, backend="pyav", **kw), video.read_frames(path, backend="ffmpeg", **kw)


@pytest.mark.parametrize("clip", REAL)
def test_pyav_is_pixel_identical_to_the_pipe_on_real_clips(data_dir, clip):
    a, f = _both(data_dir / clip)
    assert a.shape == f.shape and len(a) == probe(data_dir / clip).n_frames_25
    assert np.array_equal(a, f)


@pytest.mark.parametrize("kind", ["fps30", "vfr", "ten_bit", "av1", "one_frame", "rotated"])
def test_pyav_matches_the_pipe_on_odd_media(media, kind):
    path = media.rotated(90) if kind == "rotated" else getattr(media, kind)()
    a, f = _both(path)
    assert a.shape == f.shape and len(a) == max(1, probe(path).n_frames_25)
    if kind == "ten_bit":
        # 10 → 8 bit: the wheel's FFmpeg 8 swscale dithers differently from Debian's FFmpeg 5
        # (measured: mean |diff| 0.40, 4.6 % of values off by > 2, max 17)
        d = np.abs(a.astype(int) - f)
        assert d.mean() < 1.0 and (d > 2).mean() < 0.1
    else:  # same decoder, same swscale path; 30 fps and VFR check the fps-filter frame choice
        assert np.array_equal(a, f), np.abs(a.astype(int) - f).max()


def test_pyav_rotates_non_square_frames(media, tmp_path):
    from conftest import make_rotated

    wide = make_rotated(tmp_path / "wide_rot.mp4", src=media.testsrc(2.0, "64x48"), degrees=90)
    a, f = _both(wide)
    assert a.shape == f.shape == (50, 64, 48, 3)
    assert np.array_equal(a, f)


def test_pyav_max_side_resizes_like_the_pipe(data_dir):
    a, f = _both(data_dir / "liveportrait_d12.mp4", max_side=128)
    assert a.shape == f.shape == (183, 128, 128, 3)
    assert np.abs(a.astype(int) - f).mean() < 1.5  # both area-resize; rounding differs


def test_pyav_truncated_and_auto_fallback(media, monkeypatch):
    with pytest.raises(MediaError) as e:
        video.read_frames(media.truncated(), backend="pyav")
    assert e.value.stage == "decode" and e.value.reason in ("truncated", "undecodable")

    # 'auto' hands over to the ffmpeg pipe when PyAV cannot decode, after what PyAV yielded
    path = media.fps30()
    ref = video.read_frames(path, backend="ffmpeg")

    def broken(p, info, fps, chunk, size, **kw):
        yield video.read_frames(p, backend="ffmpeg")[:7]
        raise video._PyAVFailed("simulated decoder failure")

    monkeypatch.setattr(video, "_pyav_frames", broken)
    out = video.read_frames(path, backend="auto")
    assert np.array_equal(out, ref)
    with pytest.raises(MediaError) as e:
        video.read_frames(path, backend="pyav")
    assert (e.value.stage, e.value.reason) == ("decode", "undecodable")


def test_pyav_chunks_bound_memory(tmp_path):
    path = make_testsrc(tmp_path / "long.mp4", seconds=40.0, size="96x64")  # 1000 frames
    frame_bytes = 96 * 64 * 3
    tracemalloc.start()
    try:
        n = 0
        for block in video.iter_frames(path, chunk=16, backend="pyav"):
            assert 1 <= len(block) <= 16 and block.shape[1:] == (64, 96, 3)
            n += len(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 1000
    assert peak < 8 * 16 * frame_bytes + 2_000_000 < n * frame_bytes  # never the whole video
