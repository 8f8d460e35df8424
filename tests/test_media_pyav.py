"""PyAV backends of ``probe`` and ``load_audio`` against the ffprobe / ffmpeg CLI reference.

Every media file the test suite uses (tests/data, conftest's ``media`` factory, the derived inputs
of test_media.py and test_bad_inputs.py) plus a few more containers, codecs and display matrices
is probed and decoded by both backends; the PyAV results must equal the CLI's.

Measured on this suite (PyAV 18.1 bundles FFmpeg 8.0; the CLI is the system FFmpeg 5.1):

- ``probe``: every field equal (times are formatted like ffprobe's ``%f``, so even the floats are
  the same numbers), except the two ``KNOWN_PROBE_DIFFS`` below, where libavformat 8 reads the
  file differently from 5.1.
- ``load_audio``: same length on every file (the ±1 sample allowance is never used); samples
  bit-identical for PCM, FLAC and MP3 (libswresample gives the same output), and within
  1.19e-7 (one float32 ulp at 1.0) for AAC and 1.79e-7 for Vorbis, whose decoders changed
  between 5.1 and 8. MPEG-TS and Ogg (timestamp-discontinuity formats) go to the CLI.
"""
from __future__ import annotations

import dataclasses
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from conftest import CLIP, DATA_DIR, _x264, ffmpeg, has_encoder, make_rotated
from preprocess import audio
from preprocess import media as media_mod
from preprocess.media import MediaError, probe

#: max |PyAV - CLI| per sample; measured 1.19e-7 (AAC) and 1.79e-7 (Vorbis): the decoders of
#: FFmpeg 8 vs 5.1; 0 for PCM/FLAC/MP3.
AUDIO_ATOL = 2.5e-7
#: field -> tolerance (s) where libavformat 8 (PyAV) and 5.1 (ffprobe) disagree on a file:
#: - mp3: FFmpeg 8 subtracts the LAME encoder delay/padding from the duration (6.976 s, the
#:   length both decoders actually produce) where 5.1 says 7.056 s;
#: - Opus in WebM: FFmpeg 8 starts the audio at the pre-skip-corrected time, so the video starts
#:   2 ms after it instead of 9 ms, and the audio's length (its end, the same in both, less its
#:   start: the DURATION tag of an FFmpeg-written WebM) differs as much. (Opus audio also decodes
#:   differently: not compared below.)
KNOWN_PROBE_DIFFS = {
    "cover.mp3": {"duration_s": 0.1, "audio_duration_s": 0.1},
    "opus.webm": {"video_start_s": 0.01, "audio_duration_s": 0.01},
}
NO_AUDIO_COMPARE = {"opus.webm"}  # Opus: FFmpeg 8 vs 5.1 timelines differ by 7.7 ms (see above)


# ------------------------------------------------------------------------------------ corpus
def _ff(dst: Path, *args) -> Path:
    ffmpeg(*args, f"file:{dst}")
    return dst


def _display_matrix(dst: Path, degrees: float, hflip: bool = False) -> Path:
    """00015.mp4's first second remuxed by PyAV with a display matrix ffmpeg 5.1 cannot write."""
    import av

    with av.open(str(CLIP)) as src, av.open(str(dst), "w") as out:
        iv = src.streams.video[0]
        ov = out.add_stream_from_template(iv)
        ov.set_display_rotation(degrees, hflip=hflip)
        for pkt in src.demux(iv):
            if pkt.dts is None:
                continue
            if pkt.pts is not None and pkt.pts * iv.time_base > 1:
                break
            pkt.stream = ov
            out.mux(pkt)
    return dst


def _extra_builders() -> dict:
    """name -> build(dst): inputs of test_media / test_bad_inputs, and more containers."""
    s = f"file:{CLIP}"
    b = {
        # test_media.py
        "late_video.mp4": lambda d: _ff(d, "-i", s, "-itsoffset", "0.2", "-i", s, "-map", "1:v",
                                        "-map", "0:a", "-t", "3", "-c", "copy"),
        # test_bad_inputs.py
        "two_faces.mp4": lambda d: _ff(d, "-i", s, "-i", f"file:{DATA_DIR / '00086.mp4'}", "-t", 2,
                                       "-filter_complex", "[0:v]scale=224:224[a];[1:v]scale=150:150,"
                                       "pad=224:224:37:37[b];[a][b]hstack[v]", "-map", "[v]",
                                       "-map", "0:a", *_x264(), "-c:a", "aac"),
        "audio_8khz.mp4": lambda d: _ff(d, "-i", s, "-t", 2, "-c:v", "copy", "-ar", 8000, "-c:a", "aac"),
        "one_frame_audio.mp4": lambda d: _ff(d, "-i", s, "-t", 2, "-frames:v", 1, *_x264(),
                                             "-c:a", "aac"),
        "vfr_aac.mp4": lambda d: _ff(d, "-i", s, "-t", 2, "-vf",
                                     r"select='lt(n\,10)+not(mod(n\,3))'", "-fps_mode", "vfr",
                                     *_x264(), "-c:a", "aac"),
        # containers and codecs
        "copy.mkv": lambda d: _ff(d, "-i", s, "-t", 2, "-c", "copy"),
        "aac44k.mkv": lambda d: _ff(d, "-i", f"file:{DATA_DIR / 'liveportrait_d12.mp4'}", "-t", 3,
                                    "-c:v", "copy", "-c:a", "aac", "-ar", 44100),  # 1 ms time base
        "copy.mov": lambda d: _ff(d, "-i", s, "-t", 2, "-c", "copy"),
        "copy.ts": lambda d: _ff(d, "-i", s, "-t", 2, "-c", "copy"),
        "mpeg4_pcm.avi": lambda d: _ff(d, "-i", s, "-t", 2, "-c:v", "mpeg4", "-c:a", "pcm_s16le"),
        "flv1.flv": lambda d: _ff(d, "-i", s, "-t", 2, "-c:v", "flv1", "-c:a", "aac", "-ar", 22050),
        "audio.flac": lambda d: _ff(d, "-i", s, "-t", 2, "-vn", "-c:a", "flac"),
        "adts.aac": lambda d: _ff(d, "-i", s, "-t", 2, "-vn", "-c:a", "aac"),
        "six_channels.mp4": lambda d: _ff(d, "-i", s, "-t", 2, *_x264(), "-c:a", "aac", "-ac", 6),
        "seek_copy.mp4": lambda d: _ff(d, "-ss", 1, "-i", s, "-t", 2, "-c", "copy"),
        "cover.m4a": lambda d: _ff(d, "-i", s, "-f", "lavfi", "-i", "color=red:size=64x64:d=0.04",
                                   "-map", "0:a", "-map", "1:v", "-frames:v", 1, "-c:a", "copy",
                                   "-c:v", "png", "-disposition:v", "attached_pic"),
        "hflip90.mp4": lambda d: _display_matrix(d, 90, hflip=True),
        "rot45.mp4": lambda d: _display_matrix(d, 45),
        "rot30.mp4": lambda d: _display_matrix(d, 30),
        "rot135.mp4": lambda d: _display_matrix(d, 135),
        "anamorphic.mp4": lambda d: _ff(d, "-i", s, "-t", 1, "-vf", "setsar=4/3", *_x264(), "-an"),
        "second_default.mkv": lambda d: _ff(d, "-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=1",
                                            "-i", s, "-t", 1, "-map", "0:v", "-map", "1:v", "-map", "1:a",
                                            *_x264(), "-c:a", "aac", "-disposition:v:0", "0",
                                            "-disposition:v:1", "default"),
        "anamorphic.mkv": lambda d: _ff(d, "-i", s, "-t", 1, "-vf", "setsar=16/11", *_x264(), "-an"),
    }
    if has_encoder("libvorbis"):
        b["vorbis.ogg"] = lambda d: _ff(d, "-i", s, "-t", 2, "-vn", "-c:a", "libvorbis")
        b["vorbis22k.mkv"] = lambda d: _ff(d, "-i", s, "-t", 2, "-c:v", "copy", "-c:a", "libvorbis",
                                           "-ar", 22050)
    if has_encoder("libx265"):
        b["hevc.mp4"] = lambda d: _ff(d, "-i", s, "-t", 2, "-c:v", "libx265", "-preset", "ultrafast",
                                      "-x265-params", "log-level=none", "-c:a", "copy")
    if has_encoder("libmp3lame"):
        b["cover.mp3"] = lambda d: _ff(d, "-i", s, "-f", "lavfi", "-i", "color=red:size=64x64:d=0.04",
                                       "-map", "0:a", "-map", "1:v", "-frames:v", 1, "-c:a",
                                       "libmp3lame", "-c:v", "png", "-disposition:v", "attached_pic")
    if has_encoder("libvpx") and has_encoder("libopus"):
        b["opus.webm"] = lambda d: _ff(d, "-i", s, "-t", 2, "-c:v", "libvpx", "-deadline",
                                       "realtime", "-c:a", "libopus")
    return b


_FACTORY = {  # conftest's MediaFactory: every generator it has
    "fps30": lambda m: m.fps30(), "vfr": lambda m: m.vfr(), "rot90": lambda m: m.rotated(90),
    "rot180": lambda m: m.rotated(180), "rot270": lambda m: m.rotated(270),
    "av1": lambda m: m.av1(), "ten_bit": lambda m: m.ten_bit(), "tiny": lambda m: m.tiny(),
    "one_frame": lambda m: m.one_frame(), "audio_only": lambda m: m.audio_only(),
    "video_only": lambda m: m.video_only(), "truncated": lambda m: m.truncated(),
    "hostile": lambda m: m.hostile(), "wav8k": lambda m: m.wav(8000, 1),
    "wav44k_stereo": lambda m: m.wav(44100, 2), "testsrc": lambda m: m.testsrc(2.0, "64x48"),
    "testsrc_audio": lambda m: m.testsrc(2.0, "64x48", audio=True),
    "wide_rot": lambda m: make_rotated(m.root / "wide_rot.mp4", src=m.testsrc(2.0, "64x48")),
    "phone_rotated": lambda m: _phone_rotated(m.root / "phone_rotated.mp4"),
}
_DATA = sorted(p.name for p in DATA_DIR.iterdir() if p.suffix in (".mp4", ".wav"))
_EXTRA = _extra_builders()
NAMES = [f"data/{n}" for n in _DATA] + list(_FACTORY) + list(_EXTRA)


def _phone_rotated(dst: Path) -> Path:
    """test_bad_inputs' phone clip: pixels turned 90° clockwise plus a display matrix."""
    tmp = dst.with_name("coded_" + dst.name)
    ffmpeg("-i", f"file:{CLIP}", "-t", 2, "-vf", "pad=288:224:32:0,transpose=1", *_x264(),
           "-c:a", "aac", f"file:{tmp}")
    ffmpeg("-i", f"file:{tmp}", "-c", "copy", "-metadata:s:v", "rotate=90", f"file:{dst}")
    tmp.unlink()
    return dst


@pytest.fixture(scope="session")
def corpus(media, tmp_path_factory):
    """name -> path, built on first use."""
    root = tmp_path_factory.mktemp("pyav corpus")
    cache: dict = {}

    def get(name: str) -> Path:
        if name not in cache:
            if name.startswith("data/"):
                cache[name] = DATA_DIR / name[5:]
            elif name in _FACTORY:
                cache[name] = Path(_FACTORY[name](media))
            else:
                cache[name] = _EXTRA[name](root / name)
        return cache[name]

    return get


# ------------------------------------------------------------------------------------- probe
def _assert_same_info(a: media_mod.MediaInfo, b: media_mod.MediaInfo, tolerances: dict) -> None:
    for field in dataclasses.fields(media_mod.MediaInfo):
        x, y = getattr(a, field.name), getattr(b, field.name)
        tol = tolerances.get(field.name)
        if tol is not None:
            assert x == pytest.approx(y, abs=tol), field.name
        elif isinstance(x, float):
            assert x == pytest.approx(y, abs=1e-6), field.name  # measured: always exactly equal
        else:
            assert x == y, field.name


@pytest.mark.parametrize("name", NAMES)
def test_pyav_probe_equals_ffprobe(corpus, name):
    path = corpus(name)
    ref = probe(path, backend="ffprobe")
    got = probe(path, backend="pyav")  # raises rather than falling back
    _assert_same_info(ref, got, KNOWN_PROBE_DIFFS.get(name, {}))
    assert probe(path) == got  # auto = PyAV when PyAV can
    assert got.path == ref.path == str(path) and got.size_bytes == path.stat().st_size


def test_rotations_from_display_matrix(corpus):
    """Clockwise degrees from ffprobe's counter-clockwise matrix angle, snapped to 90."""
    expect = {"rot90": 270, "rot180": 180, "rot270": 90, "phone_rotated": 270, "hflip90.mp4": 270,
              "rot45.mp4": 0, "rot30.mp4": 0, "rot135.mp4": 180, "data/00015.mp4": 0}
    got = {k: probe(corpus(k), backend="pyav").rotation for k in expect}
    assert got == expect
    wide = probe(corpus("wide_rot"), backend="pyav")
    assert (wide.width, wide.height, wide.rotation) == (48, 64, 270)
    two = probe(corpus("second_default.mkv"))        # the default video stream, not the first
    assert (two.video_index, two.video_streams, two.width) == (1, 2, 224)
    assert probe(corpus("anamorphic.mp4")).sar == pytest.approx(4 / 3)
    assert probe(corpus("anamorphic.mkv"), backend="ffprobe").sar == pytest.approx(16 / 11)
    assert probe(corpus("data/00015.mp4")).sar == 1.0
    cover = probe(corpus("cover.m4a"), backend="pyav")
    assert (cover.has_video, cover.video_streams, cover.has_audio) == (False, 0, True)


def test_dump_capture_is_thread_safe(corpus):
    """The display matrix comes from a log capture; concurrent probes must not lose it."""
    path, errors = corpus("rot90"), []

    def work():
        try:
            for _ in range(20):
                assert probe(path, backend="pyav").rotation == 270
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    import av.logging
    assert av.logging.get_level() is None  # PyAV's default (logging off) is restored


def test_probe_backends_and_fallback(corpus, media, monkeypatch):
    path = corpus("data/00015.mp4")
    with pytest.raises(ValueError, match="backend"):
        probe(path, backend="decord")
    for backend in media_mod.PROBE_BACKENDS:  # the same reasons from every backend
        with pytest.raises(MediaError) as e:
            probe(media.text_as_mp4(), backend=backend)
        assert (e.value.stage, e.value.reason) == ("probe", "undecodable")
        with pytest.raises(MediaError) as e:
            probe(media.zero_bytes(), backend=backend)
        assert e.value.reason == "zero_bytes"
        with pytest.raises(MediaError) as e:
            probe(path.with_name("missing.mp4"), backend=backend)
        assert e.value.reason == "not_found"

    def short(p):
        raise media_mod._PyAVShort("no display matrix")

    monkeypatch.setattr(media_mod, "_probe_pyav", short)  # PyAV falls short: ffprobe answers
    assert probe(path) == probe(path, backend="ffprobe")
    with pytest.raises(MediaError, match="PyAV: no display matrix"):
        probe(path, backend="pyav")


# ------------------------------------------------------------------------------------- audio
AUDIO_NAMES = [n for n in NAMES if n not in NO_AUDIO_COMPARE]


@pytest.mark.parametrize("name", AUDIO_NAMES)
def test_pyav_audio_equals_ffmpeg_cli(corpus, name):
    path = corpus(name)
    info = probe(path, backend="ffprobe")
    if not info.has_audio:
        with pytest.raises(MediaError, match="no_audio_stream"):
            audio.load_audio(path, info=info, backend="pyav")
        return
    ref = audio.load_audio(path, info=info, backend="ffmpeg")
    if name in ("copy.ts", "vorbis.ogg"):  # timestamp-discontinuity formats: CLI only
        with pytest.raises(MediaError, match="PyAV: format .* discontinuities"):
            audio.load_audio(path, info=info, backend="pyav")
        assert np.array_equal(audio.load_audio(path, info=info), ref)  # auto → CLI
        return
    got = audio.load_audio(path, info=info, backend="pyav")
    assert got.dtype == np.float32 and got.ndim == 1
    assert abs(len(got) - len(ref)) <= 1  # measured: always the same length
    n = min(len(got), len(ref))
    assert np.abs(got[:n] - ref[:n]).max() <= AUDIO_ATOL  # measured: 0, 1.19e-7 or 1.79e-7
    raw_ref = audio.load_audio(path, info=info, backend="ffmpeg", align_to_video=False)
    raw = audio.load_audio(path, info=info, backend="pyav", align_to_video=False)
    assert len(raw) - len(got) == len(raw_ref) - len(ref)  # same video-start trim
    assert np.array_equal(audio.load_audio(path, info=info), got)  # auto = PyAV


def _corrupt_packets(src: Path, dst: Path, first: int, count: int) -> int:
    """Overwrite ``count`` AAC packets from ``first`` with 0xFF; return the packet count."""
    import av

    with av.open(str(src)) as c:
        packets = [(p.pos, p.size) for p in c.demux(c.streams.audio[0]) if p.size]
    data = bytearray(src.read_bytes())
    for pos, size in packets[first:first + count]:
        data[pos:pos + size] = b"\xff" * size
    dst.write_bytes(bytes(data))
    return len(packets)


def test_corrupt_packets_are_skipped_like_the_cli(media, tmp_path):
    """A bad packet is skipped (the gap becomes silence, same length); > 2/3 bad fails the file."""
    src = media.audio_only()
    few = tmp_path / "few_bad.mp4"
    n = _corrupt_packets(src, few, 10, 5)
    info = probe(few)
    ref = audio.load_audio(few, info=info, backend="ffmpeg")
    got = audio.load_audio(few, info=info, backend="pyav")
    assert len(got) == len(ref) == len(audio.load_audio(src)) and n == 110
    assert np.abs(got - ref).max() <= AUDIO_ATOL
    most = tmp_path / "most_bad.mp4"
    _corrupt_packets(src, most, 20, 80)  # 80 of 110: over -max_error_rate (2/3)
    for backend in audio.AUDIO_BACKENDS:
        with pytest.raises(MediaError) as e:
            audio.load_audio(most, info=probe(most), backend=backend)
        assert (e.value.stage, e.value.reason) == ("audio", "undecodable")


def test_audio_backends_and_fallback(data_dir, media, monkeypatch):
    path = data_dir / "00015.mp4"
    with pytest.raises(ValueError, match="backend"):
        audio.load_audio(path, backend="sox")
    for backend in audio.AUDIO_BACKENDS:
        with pytest.raises(MediaError) as e:
            audio.load_audio(media.video_only(), backend=backend)
        assert (e.value.stage, e.value.reason) == ("audio", "no_audio_stream")
        with pytest.raises(MediaError) as e:
            audio.load_audio(media.text_as_mp4(), backend=backend)
        assert (e.value.stage, e.value.reason) == ("probe", "undecodable")

    def short(*args):
        raise audio._PyAVShort("parameters change mid-stream")

    monkeypatch.setattr(audio, "_decode_pyav", short)
    assert np.array_equal(audio.load_audio(path), audio.load_audio(path, backend="ffmpeg"))
    with pytest.raises(MediaError, match="PyAV: parameters change"):
        audio.load_audio(path, backend="pyav")


def test_rescale_delta_keeps_samples_contiguous():
    """av_rescale_delta: 1 ms Matroska stamps of 1024-sample frames map to 0, 1024, 2048, ..."""
    r = audio._RescaleDelta(Fraction(1, 1000), 44100)
    ms = [round(k * 1024 / 44.1) for k in range(50)]
    assert [r(t, 1024) for t in ms] == [1024 * k for k in range(50)]
    assert r(10_000, 1024) == 441_000  # a jump beyond rounding resyncs to the plain rescale
    exact = audio._RescaleDelta(Fraction(1, 44100), 44100)  # fine time base: plain rounding
    assert [exact(t, 1024) for t in (0, 1000, 5000)] == [0, 1000, 5000]
    assert audio._rescale(-5, 1, 2) == -3 and audio._rescale(5, 1, 2) == 3  # half away from 0
    assert audio._rescale(-5, 1, 2, "down") == -3 and audio._rescale(-5, 1, 2, "up") == -2
