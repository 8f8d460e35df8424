"""Declared sizes cannot exhaust a worker (issue 9, item 4).

The adversarial files of bench/adversarial.py, made from 00015.mp4 at test time (a few hundred
KB each): each runs through ``run_source`` in a fresh worker process (landmark backend loaded)
whose peak RSS must stay under 1 GiB, and ends as the reject the limits name, found at probe
from headers and packet timestamps, before anything is decoded.
"""
from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest

from bench import adversarial
from conftest import CLIP
from preprocess import audio, config, media, source

GIB_MIB = 1024


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("adversarial")
    out = {name: make(d / f"{name}.mp4") for name, make in adversarial.MAKERS.items() if name != "fps1_1h"}
    out["fps1_5min"] = adversarial.make_fps1_1h(d / "fps1_5min.mp4", seconds=300)
    return out


def test_limits_are_config_with_defaults():
    cfg = config.load(source.PreprocessConfig, None, ["limits.max_pixels=1000", "limits.max_gap_s=2.5"])
    assert (cfg.limits.max_pixels, cfg.limits.max_gap_s) == (1000, 2.5)
    d = source.LimitsConfig()
    assert 3840 * 2160 <= d.max_pixels < 8000 * 8000 and d.max_duration_s >= 3600 and 1 <= d.max_gap_s <= 60


@pytest.mark.parametrize("name, overrides, reason", [
    ("gap_3h", [], "too_long"),                                          # 3 h declared, 7 s held
    ("gap_3h", ["limits.max_duration_s=20000"], "timestamp_gap"),        # the gap itself
    ("huge_frame", [], "too_large"),                                     # 8000×8000
    ("huge_sar", [], "too_large"),                  # 1024² stored, decoded as displayed: 102400×1024
    ("video_gap_600s", [], "timestamp_gap"),                             # 174 frames, 600 s apart
])
def test_adversarial_file_is_a_reject_within_a_gib(files, tmp_path, name, overrides, reason):
    r = adversarial.run_worker(files[name], tmp_path / "ds", overrides, timeout=600)
    assert (r["status"], r["reasons"], r["frames"]) == ("rejected", [reason], 0), r
    assert r["maxrss_mib"] < GIB_MIB, r
    assert r["wall_s"] < 30, r  # nothing decoded (the 600 s gap once took 15,175 frames)


def test_one_fps_clip_becomes_rows_within_a_gib(files, tmp_path):
    r = adversarial.run_worker(files["fps1_5min"], tmp_path / "ds", timeout=900)
    assert r["status"] == "rows" and r["frames"] > 0, r
    assert r["maxrss_mib"] < GIB_MIB, r


def test_gaps_found_from_packets_without_decoding(files, monkeypatch):
    for name, kind in (("video_gap_600s", "video"), ("gap_3h", "audio")):
        info = media.probe(files[name])
        with pytest.raises(media.MediaError, match=f"Expected {kind} timestamps without gaps") as e:
            media.check_gaps(files[name], info, 10.0)
        assert (e.value.stage, e.value.reason) == ("probe", "timestamp_gap")
    media.check_gaps(CLIP, media.probe(CLIP), 1.0)  # 40 ms frames, 64 ms audio packets: no gap
    info = media.probe(CLIP)
    late = dataclasses.replace(info, audio_start_s=info.video_start_s + 30.0)
    with pytest.raises(media.MediaError, match="start within"):
        media.check_limits(late, max_gap_s=10.0)
    media.check_limits(info, max_pixels=224 * 224, max_duration_s=7.0, max_gap_s=0.1)

    def unreadable(p, stage, timeout=None):  # a file only ffprobe reads: the decoders decide
        raise media.MediaError(stage, "undecodable", "simulated", p)

    monkeypatch.setattr(media, "open_av", unreadable)
    media.check_gaps(files["video_gap_600s"], media.probe(files["video_gap_600s"], backend="ffprobe"), 10.0)


def test_audio_is_held_per_segment_not_per_track(files):
    """A 5-minute track goes to a temporary file; a segment's mel needs its own samples only,
    and equals the rows of the whole track's mel."""
    path = files["fps1_5min"]
    whole = audio.load_audio(path)
    ref = audio.log_mel(whole)
    tracemalloc.start()
    try:
        with audio.decode_audio(path) as track:
            assert len(track) == len(whole)
            rows = [track.mel_rows(r0, r0 + 1000) for r0 in (0, 12345, len(ref) - 600)]
            np.testing.assert_array_equal(track.read(5000, 9000), whole[5000:9000])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # one 10 s block's STFT (~5 MB) and its mel, whatever the track's length (here 19 MB; 1 h: 230 MB)
    assert peak < 12e6, peak
    for r0, got in zip((0, 12345, len(ref) - 600), rows):
        np.testing.assert_allclose(got, ref[r0: r0 + 1000], rtol=0, atol=1e-5)
    short = audio.load_audio(path, max_seconds=10.0)
    np.testing.assert_array_equal(short, whole[:160000])


def test_segment_mel_pads_past_the_track_end(files):
    with audio.decode_audio(CLIP) as track:
        n_rows = 1 + len(track) // 160
        mel = source.segment_mel(track, 170, 10)  # frames 170..179: the track ends inside frame 174
        assert mel.shape == (40, 80)
        ref = audio.log_mel(audio.load_audio(CLIP))
        np.testing.assert_allclose(mel[: n_rows - 680], ref[680:], rtol=0, atol=1e-5)
        assert (mel[n_rows - 680:] == ref[-1]).all()
