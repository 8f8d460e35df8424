"""Any input frame rate becomes ffmpeg's ``fps=25`` output (issue 9, item 2).

A 5 fps copy of 00015.mp4 was rejected ``decode/truncated: Expected 175 frames. Got 171 (pyav)``:
the PyAV emitter ignored how long the last frame lasts. Each rate below is generated from
tests/data/00015.mp4 at test time; PyAV must give the frames of the ffmpeg CLI pipe (count and
choice, pixel for pixel) and the count of ffmpeg's own ``fps=25`` filter run without a limit.
"""
from __future__ import annotations

import dataclasses
import subprocess

import numpy as np
import pytest

from conftest import CLIP, ffmpeg, make_vfr
from preprocess import video
from preprocess.media import MediaError, probe

RATES = ["1", "2", "5", "12", "15", "24", "25", "30000/1001", "30", "50", "60", "120"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("rates")
    out = {}
    for r in RATES:
        p = d / f"r{r.replace('/', '_')}.mp4"
        ffmpeg("-i", f"file:{CLIP}", "-vf", f"fps={r},scale=96:96", "-c:v", "libx264", "-preset",
               "ultrafast", "-crf", "18", "-an", f"file:{p}")
        out[r] = p
    out["vfr"] = make_vfr(d / "vfr.mp4", seconds=7.0)
    return out


def _cli_count(path) -> int:
    """Frames of ffmpeg's own ``setpts=PTS-STARTPTS,fps=25`` chain, without -frames:v or padding."""
    res = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", f"file:{path}", "-vf",
                          "setpts=PTS-STARTPTS,fps=fps=25/1:round=near", "-f", "rawvideo",
                          "-pix_fmt", "gray", "pipe:1"], capture_output=True, check=True)
    w, h = probe(path).width, probe(path).height
    return len(res.stdout) // (w * h)


@pytest.mark.parametrize("rate", RATES + ["vfr"])
def test_pyav_gives_the_frames_of_ffmpeg_fps_filter(clips, rate):
    path = clips[rate]
    info = probe(path)
    a = video.read_frames(path, info, backend="pyav")
    f = video.read_frames(path, info, backend="ffmpeg")
    n = _cli_count(path)
    assert len(a) == len(f) == n == info.n_frames_25, (len(a), len(f), n, info.n_frames_25)
    assert np.array_equal(a, f)  # the same source frame in every slot, the last one included
    auto = video.read_frames(path, info, backend="auto")
    assert np.array_equal(auto, f)


def test_last_frame_lasts_its_duration(clips):
    """1 fps: 7 source frames, each shown in 25 slots, the last one too (not 1 slot + padding)."""
    a = video.read_frames(clips["1"], backend="pyav")
    assert len(a) == 175
    starts = [0] + [k for k in range(1, len(a)) if not np.array_equal(a[k], a[k - 1])]
    assert starts == [0, 25, 50, 75, 100, 125, 150]


def test_count_disagreement_falls_back_to_the_pipe_in_auto(clips, monkeypatch):
    path = clips["5"]
    info = probe(path)
    longer = dataclasses.replace(info, duration_s=info.duration_s + 0.2, n_frames_25=info.n_frames_25 + 5)
    with pytest.raises(MediaError, match=r"\(pyav\)") as e:
        video.read_frames(path, longer, backend="pyav")
    assert (e.value.stage, e.value.reason) == ("decode", "truncated")

    calls = []
    real = video._ffmpeg_frames

    def spy(*args, **kw):
        calls.append(kw.get("skip", 0))
        yield from real(*args, **kw)

    monkeypatch.setattr(video, "_ffmpeg_frames", spy)
    with pytest.raises(MediaError) as e:  # the pipe has the last word (here it also falls short)
        video.read_frames(path, longer, backend="auto")
    assert calls and e.value.reason == "truncated" and "(pyav)" not in str(e.value)
    # where the pipe reaches the count, 'auto' gives its frames instead of a reject
    assert np.array_equal(video.read_frames(path, info, backend="auto"),
                          video.read_frames(path, info, backend="ffmpeg"))
