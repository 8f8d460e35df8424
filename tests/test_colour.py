"""HDR and BT.2020 video (attack on real-world files): phones have recorded HLG HDR by default since
2020 (10-bit HEVC, BT.2020), and HDR10 masters state PQ. Read as plain YUV, their faces came out
about 40 grey levels too dark with half their saturation, in the crops the model learns from and in
the frames dubbing pastes into. The decoders now turn them into the SDR BT.709 picture they show
(``video.sdr_filters``: FFmpeg's zscale, in the ffmpeg pipe). The HDR clips are made here from the
bundled (SDR, BT.709-like) clip, so that the SDR picture each should give is known."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import CLIP, ffmpeg
from preprocess import failures, media, video
from preprocess.media import MediaError

#: the clip's first 2 s mastered as HDR: SDR white at 100 cd/m² in linear light (zscale's npl), as the
#: decoders' conversion takes it, so the SDR clip is what a right decode gives back
MASTERS = {
    "hlg.mov": ("arib-std-b67", "-tag:v", "hvc1"),
    "pq.mp4": ("smpte2084",),
}
#: mean distance from the SDR clip allowed (grey levels): measured 6.0 (HLG) and 11.1 (PQ: the knee
#: rolls off its brightest light); read as plain YUV, both were 39-40 away
WITHIN = {"hlg.mov": 9, "pq.mp4": 15}


@pytest.fixture(scope="module")
def hdr(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("hdr")
    out = {}
    for name, (transfer, *extra) in MASTERS.items():
        out[name] = d / name
        ffmpeg("-i", f"file:{CLIP}", "-t", "2", "-vf",
               f"zscale=tin=bt709:min=bt709:pin=bt709:rin=tv:t={transfer}:m=bt2020nc:p=bt2020:r=tv:npl=100,"
               "format=yuv420p10le", "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error",
               *extra, "-color_primaries", "bt2020", "-color_trc", transfer, "-colorspace", "bt2020nc",
               "-c:a", "aac", f"file:{out[name]}")
    return out


def saturation(frames: np.ndarray) -> float:
    return float((frames.max(-1).astype(np.float32) - frames.min(-1)).mean())


@pytest.mark.parametrize("name", sorted(MASTERS))
def test_hdr_video_is_decoded_as_the_sdr_picture_it_shows(hdr, name):
    transfer = MASTERS[name][0]
    info = media.probe(hdr[name])
    for probed in (info, media.probe(hdr[name], backend="ffprobe")):
        assert (probed.color_transfer, probed.color_primaries, probed.color_space) == (transfer, "bt2020", "bt2020nc")
        assert probed.hdr and probed.wide_colour
    assert not media.probe(CLIP).wide_colour
    assert video.choose_backend(info) == "ffmpeg" and video.sdr_filters(media.probe(CLIP)) == []
    want = video.read_frames(CLIP)[:50].astype(np.float32)
    got = video.read_frames(hdr[name], info=info)
    assert got.shape == (50, 224, 224, 3)
    err = float(np.abs(got - want).mean())
    assert err < WITHIN[name], err
    assert abs(saturation(got) - saturation(want)) < 0.15 * saturation(want)
    plain = video.read_frames(hdr[name], info=replace(info, color_transfer=None, color_primaries=None),
                              backend="ffmpeg")             # what every decoder gave before
    assert float(np.abs(plain - want).mean()) > 30 and saturation(plain) < 0.7 * saturation(want)
    # a clip range is the whole decode's frames
    part = np.concatenate(list(video.iter_frames(hdr[name], info=info, first=20, stop=35)))
    assert np.array_equal(part, got[20:35])
    with pytest.raises(MediaError, match="zscale"):         # PyAV's FFmpeg has no zscale: not silently wrong
        video.read_frames(hdr[name], info=info, backend="pyav")


def test_an_ffmpeg_without_zscale_is_the_machines_failure_not_the_files(hdr, monkeypatch):
    """A worker whose ffmpeg lacks zscale cannot decode HDR right; that says nothing about the file,
    so it must never become a reject: an environment failure, in one line naming what to install."""
    monkeypatch.setattr(video, "_ZSCALE", {media.ffmpeg_bin("ffmpeg"): False})
    with pytest.raises(failures.EnvironmentFailure, match="zscale.*Debian's ffmpeg") as e:
        video.read_frames(hdr["hlg.mov"])
    assert failures.is_environment_error(e.value)
    assert len(video.read_frames(CLIP)) == 174                # SDR video does not need it
    monkeypatch.setattr(video, "_ZSCALE", {})
    assert video._has_zscale()                               # Debian's ffmpeg, which set-up installs


def test_preprocess_gives_an_hlg_clip_the_faces_of_its_sdr_master(hdr, tmp_path):
    import radio.cli
    from preprocess import schema, shards

    sdr = tmp_path / "sdr.mp4"
    ffmpeg("-i", f"file:{CLIP}", "-t", "2", "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-c:a", "aac",
           f"file:{sdr}")
    crops = {}
    for name, src in (("sdr", sdr), ("hlg", hdr["hlg.mov"])):
        out = tmp_path / name
        assert radio.cli.main(["preprocess", "--input", str(src), "--output", str(out), "--no-progress"]) == 0
        rows = [r for s in shards.list_shards(str(out)) for r in shards.read_shard(s).to_pylist()]
        assert rows, name
        crops[name] = np.stack([schema.decode_image(f) for r in rows for f in r["frames"]]).astype(np.float32)
    assert len(crops["hlg"]) == len(crops["sdr"]) == 50
    assert abs(crops["hlg"].mean() - crops["sdr"].mean()) < 8, (crops["hlg"].mean(), crops["sdr"].mean())  # 3.8
    assert float(np.abs(crops["hlg"] - crops["sdr"]).mean()) < 12
