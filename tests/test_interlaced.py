"""Interlaced video (attack on real-world containers): AVCHD camcorders' .mts/.m2ts, DVD .vob and
broadcast recordings (1080i, 576i) store each frame as two fields shot 20 ms apart. Decoded as
frames, every moving edge (a talking mouth) is combed: the crops carried comb lines the model would
learn to draw. The probe tells interlaced video from its first decoded frame, and the decoders run
FFmpeg's yadif on frames flagged interlaced (PyAV through its filter graph, the pipe in ``-vf``)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import CLIP, ffmpeg
from preprocess import media, video


def comb(frames: np.ndarray) -> float:
    """Mean distance of each row from the mean of its two neighbours (grey levels): the comb
    pattern of two fields from different instants raises it where the picture moves."""
    g = frames.astype(np.float32).mean(-1)
    return float(np.abs(g[:, 1:-1] - (g[:, :-2] + g[:, 2:]) / 2).mean())


def woven_info(info: media.MediaInfo) -> media.MediaInfo:
    """``info`` as the decoders took it before they deinterlaced: no yadif."""
    return media.replace(info, interlaced=False, container="")


ENCODERS = {   # the real clip at 50 fps woven into 25 interlaced frames a second, top field first
    "h264.ts": ["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-flags", "+ildct+ilme",
                "-x264-params", "tff=1"],
    "mpeg2.mpg": ["-c:v", "mpeg2video", "-q:v", "2", "-g", "25", "-flags", "+ildct+ilme", "-top", "1"],
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("interlaced")
    out = {}
    for name, encoder in ENCODERS.items():
        out[name] = d / name
        ffmpeg("-i", f"file:{CLIP}", "-t", "4", "-vf", "fps=50,interlace=scan=tff:lowpass=0", *encoder,
               "-an", f"file:{out[name]}")
    # what was filmed, progressive at 25 fps (the even 50 fps frames: the top fields' instants)
    out["progressive"] = d / "progressive.mkv"
    ffmpeg("-i", f"file:{CLIP}", "-t", "4", "-vf", "fps=50,select=not(mod(n\\,2))", "-fps_mode", "passthrough",
           "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", f"file:{out['progressive']}")
    return out


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_interlaced_video_is_deinterlaced_alike_by_every_decoder(clips, name):
    info = media.probe(clips[name])
    assert info.interlaced and media.probe(clips[name], backend="ffprobe").interlaced
    assert not media.probe(CLIP).interlaced and not media.probe(clips["progressive"]).interlaced
    assert video.choose_backend(info) == "ffmpeg"             # decord has no deinterlacer
    frames = video.read_frames(clips[name], backend="pyav")
    assert len(frames) == info.n_frames_25 == 100
    piped = video.read_frames(clips[name], backend="ffmpeg")
    assert np.abs(frames.astype(int) - piped).mean() < 0.5      # the same yadif in both
    # a clip range is the whole decode's frames (PyAV seeks to a keyframe; yadif needs the frame before)
    for first in (25, 50, 60):
        part = np.concatenate(list(video.iter_frames(clips[name], backend="pyav", first=first, stop=first + 20)))
        assert np.array_equal(part, frames[first:first + 20]), first


def test_deinterlaced_frames_lose_their_comb(clips):
    ref = video.read_frames(clips["progressive"])
    deinterlaced = video.read_frames(clips["h264.ts"])
    woven = video.read_frames(clips["h264.ts"], info=woven_info(media.probe(clips["h264.ts"])),
                              backend="pyav")                   # as it was decoded before
    assert len(ref) == len(deinterlaced) == len(woven) == 100
    excess_woven, excess = comb(woven) - comb(ref), comb(deinterlaced) - comb(ref)
    assert excess_woven > 0.6, excess_woven                      # measured 0.82 grey levels
    assert excess < excess_woven / 2, (excess, excess_woven)     # measured 0.13


def test_a_recording_that_changes_size_midway_is_deinterlaced_throughout(tmp_path):
    """A broadcast capture switching programmes changes its frame size: PyAV's yadif graph was
    built for the first size and failed at the switch ('Operation not permitted'), and the whole
    file went to the slower pipe. The graph is built again for the new size, as the CLI does."""
    parts = []
    for i, (size, start) in enumerate([("448:448", 0), ("320:240", 2)]):
        parts.append(tmp_path / f"{i}.ts")
        ffmpeg("-ss", str(start), "-i", f"file:{CLIP}", "-t", "2", "-vf",
               f"scale={size},fps=50,interlace=scan=tff:lowpass=0", *ENCODERS["h264.ts"], "-c:a", "aac",
               "-output_ts_offset", str(start), "-f", "mpegts", f"file:{parts[-1]}")
    switch = tmp_path / "switch.ts"
    switch.write_bytes(b"".join(p.read_bytes() for p in parts))
    info = media.probe(switch)
    assert info.interlaced and (info.height, info.width) == (448, 448)
    frames = video.read_frames(switch, backend="pyav")         # raised _PyAVFailed at the switch
    piped = video.read_frames(switch, backend="ffmpeg")
    assert len(frames) == len(piped) == info.n_frames_25
    assert np.abs(frames[:45].astype(int) - piped[:45]).mean() < 0.5
    woven = video.read_frames(switch, info=woven_info(info), backend="pyav")
    assert comb(frames[55:]) < 0.8 * comb(woven[55:])      # the part after the switch is deinterlaced too


def test_a_recording_that_turns_interlaced_after_a_progressive_start_is_deinterlaced(tmp_path):
    """Interlacing was read from the first decoded frame only: a broadcast recording starting with
    progressive frames (a film, an advert) before a live 1080i/576i programme kept its comb. Broadcast,
    camcorder and DVD containers are now always decoded through yadif, which passes progressive
    frames unchanged (frames flagged interlaced only)."""
    parts = [tmp_path / "0.ts", tmp_path / "1.ts"]
    ffmpeg("-i", f"file:{CLIP}", "-t", "2", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-an",
           "-f", "mpegts", f"file:{parts[0]}")
    ffmpeg("-ss", "2", "-i", f"file:{CLIP}", "-t", "4", "-vf", "fps=50,interlace=scan=tff:lowpass=0",
           *ENCODERS["h264.ts"], "-an", "-output_ts_offset", "2", "-f", "mpegts", f"file:{parts[1]}")
    recording = tmp_path / "recording.ts"
    recording.write_bytes(b"".join(p.read_bytes() for p in parts))
    info = media.probe(recording)
    assert not info.interlaced and info.deinterlace              # a progressive first frame, a TS
    assert not media.probe(CLIP).deinterlace                     # an MP4 is decoded as before
    frames = video.read_frames(recording, info=info, backend="pyav")
    piped = video.read_frames(recording, info=info, backend="ffmpeg")
    woven = video.read_frames(recording, info=woven_info(info), backend="pyav")
    assert len(frames) == len(piped) == len(woven) == info.n_frames_25 == 150
    assert np.array_equal(frames[:50], woven[:50])               # progressive frames pass unchanged
    assert np.abs(frames.astype(int) - piped).mean() < 0.5
    assert comb(frames[55:]) < 0.85 * comb(woven[55:]), (comb(frames[55:]), comb(woven[55:]))   # 1.93 vs 2.61
