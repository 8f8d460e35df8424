"""Where a video starts and ends when its headers mislead (attack on real-world containers).

- An MPEG-TS capture cut mid-GOP starts with frames that cannot be decoded: the decoders take the
  first frame that decodes as frame 0, the header's start put audio sample 0 two frames earlier
  (80 ms out of sync, the count padded at the end with frozen frames), and past two such frames
  the source was a `truncated` reject.
- FFmpeg-written Matroska/WebM state a stream's length as the time its last frame ends (the
  ``DURATION`` tag, start included): a video starting 0.5 s into the file was a `truncated` reject,
  and every x264 MKV (B-frame delay 0.064 s) counted two frames more than it has.
- Matroska/WebM written to a pipe (a browser's MediaRecorder, a live capture) state no duration
  at all: they were `too_short` rejects ("Got 0.000 s").
"""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from conftest import CLIP, ffmpeg
from preprocess import audio, media, video

SR = audio.SAMPLE_RATE


def _lag(a: np.ndarray, b: np.ndarray, max_lag: int = 2000) -> int:
    """The shift k (samples) for which b[i] best matches a[i + k], over a 1 s window of b."""
    w = b[4000:20000]
    errs = [np.abs(a[4000 + k:20000 + k] - w).mean() for k in range(-max_lag, max_lag + 1)]
    return int(np.argmin(errs)) - max_lag


CODECS = {   # (encoder arguments, video packets before the keyframe where the capture starts)
    "h264": (["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-bf", "0"], 2),
    # open GOP: the keyframe's leading B-frames reference the GOP before it. FFmpeg 5.1's decoder (the
    # CLI's) outputs them grey, PyAV's drops them: the pipe was 6 frames (240 ms) behind the audio
    "hevc-open-gop": (["-c:v", "libx265", "-preset", "ultrafast",
                       "-x265-params", "open-gop=1:keyint=25:min-keyint=25:bframes=3:log-level=error"], 5),
}


@pytest.fixture(scope="module", params=sorted(CODECS))
def ts(tmp_path_factory, request) -> dict:
    """A TS of the real clip (keyframe every 25 frames) and a copy cut a few packets before its
    keyframe past 1.6 s, at a TS packet boundary, as a capture that starts mid-GOP."""
    d = tmp_path_factory.mktemp("ts")
    full = d / "full.ts"
    encoder, back = CODECS[request.param]
    ffmpeg("-i", f"file:{CLIP}", "-t", "5", *encoder, "-c:a", "aac", "-f", "mpegts", f"file:{full}")
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
                          "packet=pts_time,pos,flags", "-of", "json", f"file:{full}"],
                         capture_output=True, text=True, check=True).stdout
    packets = json.loads(out)["packets"]
    key = next(i for i, p in enumerate(packets) if i >= 40 and "K" in p["flags"])
    cut_at = int(packets[key - back]["pos"]) // 188 * 188    # a TS packet boundary before those frames' data
    cut = d / "cut.ts"
    cut.write_bytes(full.read_bytes()[cut_at:])
    first = min(float(p["pts_time"]) for p in packets)
    return {"full": full, "cut": cut, "key": round((float(packets[key]["pts_time"]) - first) * 25)}


def test_a_capture_cut_mid_gop_starts_at_its_first_frame_that_decodes(ts):
    full, cut = media.probe(ts["full"]), media.probe(ts["cut"])
    frames_full, frames_cut = video.read_frames(ts["full"]), video.read_frames(ts["cut"])
    # the cut decodes from its first keyframe: frame `key` of the whole file on, nothing padded
    k = ts["key"]
    assert cut.n_frames_25 == full.n_frames_25 - k == len(frames_cut), (cut, full.n_frames_25, k)
    assert np.abs(frames_cut.astype(int) - frames_full[k:k + len(frames_cut)]).mean() < 0.5
    for backend in ("pyav", "ffmpeg"):   # both decoders agree on frame 0: the first that decodes
        frames = video.read_frames(ts["cut"], backend=backend)
        assert len(frames) == cut.n_frames_25, backend
        assert np.abs(frames.astype(int) - frames_cut).mean() < 0.5, backend
    # audio sample 0 is that frame's time: the cut's audio is the whole file's from frame k on
    a_full, a_cut = audio.load_audio(ts["full"]), audio.load_audio(ts["cut"])
    assert abs(_lag(a_full[k * SR // 25:], a_cut)) <= 16     # it was 1280 samples: 2 frames late


def test_ffmpeg_written_matroska_states_its_stream_ends(tmp_path):
    """The DURATION tag of an FFmpeg-written MKV is where the stream ends, not its length."""
    ref = tmp_path / "ref.mp4"
    ffmpeg("-i", f"file:{CLIP}", "-t", "4", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", f"file:{ref}")
    for name in ("late.mkv", "late.mp4", "late.webm"):
        codec = ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-c:a", "libopus"] if name.endswith("webm") else \
            ["-c", "copy"]
        ffmpeg("-itsoffset", "0.5", "-i", f"file:{ref}", "-i", f"file:{ref}", "-map", "0:v", "-map", "1:a",
               *codec, f"file:{tmp_path / name}")
    ffmpeg("-i", f"file:{ref}", "-c", "copy", f"file:{tmp_path / 'plain.mkv'}")   # B-frame delay 0.064 s
    want = media.probe(ref).n_frames_25
    for name in ("late.mkv", "late.mp4", "late.webm", "plain.mkv"):
        p = tmp_path / name
        info = media.probe(p)
        frames = video.read_frames(p)
        assert info.n_frames_25 == len(frames) == want, (name, info.n_frames_25, len(frames), want)
        assert not (frames[-1] == frames[-2]).all(), name          # no frozen copies padded on
    assert abs(media.probe(tmp_path / "late.mkv").video_start_s - 0.5) < 0.1
    # the same streams in MKV and MP4: the same frames and the same sound at frame 0
    mkv, mp4 = video.read_frames(tmp_path / "late.mkv"), video.read_frames(tmp_path / "late.mp4")
    assert np.abs(mkv.astype(int) - mp4).mean() < 0.5
    assert abs(_lag(audio.load_audio(tmp_path / "late.mp4"), audio.load_audio(tmp_path / "late.mkv"))) <= 16


@pytest.mark.parametrize("fmt", ["matroska", "webm"])
def test_matroska_written_to_a_pipe_is_measured_from_its_packets(tmp_path, fmt):
    codec = ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"] if fmt == "matroska" else \
        ["-c:v", "libvpx", "-deadline", "realtime", "-b:v", "1M", "-c:a", "libopus"]
    piped, whole = tmp_path / f"piped.{fmt[:4]}", tmp_path / f"whole.{fmt[:4]}"
    args = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", f"file:{CLIP}", "-t", "3", *codec, "-f", fmt]
    with open(piped, "wb") as f:
        subprocess.run([*args, "pipe:1"], stdout=f, check=True)
    subprocess.run([*args, f"file:{whole}"], check=True)
    info, ref = media.probe(piped), media.probe(whole)
    assert ref.duration_s > 0 and info.n_frames_25 == ref.n_frames_25 == 75, (info, ref)
    media.validate(info, need_audio=True)                     # was too_short: "Got 0.000 s (0 frames)"
    assert info.audio_duration_s == pytest.approx(ref.audio_duration_s, abs=0.05)
    assert len(video.read_frames(piped)) == 75


def test_matroska_statistics_tags_are_durations_whoever_muxed_the_file():
    """mkvmerge, and mkvpropedit --add-track-statistics-tags run on an FFmpeg-written file, write
    DURATION as the stream's length (with ``_STATISTICS_TAGS``): it is not an end time there."""
    fmt = {"tags": {"ENCODER": "Lavf59.27.100"}}
    stream = {"start_time": "0.564000", "tags": {"DURATION": "00:00:06.960000000"}}
    assert media._tag_duration(stream, fmt) == pytest.approx(6.396)          # FFmpeg's: where it ends
    stream["tags"]["_STATISTICS_TAGS"] = "BPS DURATION NUMBER_OF_FRAMES NUMBER_OF_BYTES"
    assert media._tag_duration(stream, fmt) == pytest.approx(6.96)
    assert media._tag_duration({"start_time": "0.5", "tags": {"DURATION": "00:00:02.000"}},
                               {"tags": {"ENCODER": "libebml v1.4.2 + libmatroska v1.6.4"}}) == 2.0
