"""preprocess.media / video / audio on real media (tests/data) and ffmpeg-derived variants."""
from __future__ import annotations

import json
import pickle
import tracemalloc

import librosa
import numpy as np
import pytest
import scipy.signal

from conftest import ffmpeg, make_rotated
from preprocess import audio, video
from preprocess import media as media_mod
from preprocess.media import MediaError, probe

CLIP_S = 6.96  # 00015.mp4


# ------------------------------------------------------------------------------------- probe
@pytest.mark.parametrize("backend", ["pyav", "ffprobe"])  # tests/test_media_pyav.py: they agree
def test_probe_real_clips(data_dir, backend):
    i = probe(data_dir / "00015.mp4", backend=backend)
    assert (i.width, i.height, i.rotation, i.fps, i.is_vfr) == (224, 224, 0, 25.0, False)
    assert i.duration_s == pytest.approx(CLIP_S) and i.n_frames_25 == 174
    assert (i.video_codec, i.pix_fmt, i.has_audio, i.audio_rate, i.audio_channels) == \
        ("h264", "yuv420p", True, 16000, 1)
    lp = probe(data_dir / "liveportrait_d12.mp4", backend=backend)
    assert (lp.width, lp.audio_rate, lp.audio_channels, lp.n_frames_25) == (512, 44100, 2, 183)
    wav = probe(data_dir / "david4.wav", backend=backend)
    assert (wav.has_video, wav.has_audio, wav.audio_rate, wav.n_frames_25) == (False, True, 8000, 0)
    assert wav.duration_s == pytest.approx(30.0)
    assert video.frame_count_25(i) == 174 and video.frame_count(i, 30) == round(CLIP_S * 30)


@pytest.mark.parametrize("make, reason", [("zero_bytes", "zero_bytes"), ("text_as_mp4", "undecodable")])
def test_probe_refuses_broken_files(media, make, reason):
    path = getattr(media, make)()
    with pytest.raises(MediaError) as e:
        probe(path)
    assert (e.value.stage, e.value.reason) == ("probe", reason)
    with pytest.raises(MediaError) as e:  # decoding probes first, and says why
        video.read_frames(path)
    assert e.value.reason == reason
    with pytest.raises(MediaError, match="not_found"):
        probe(path.with_name("missing.mp4"))


def test_media_error_pickles_and_validate(media, data_dir):
    e = pickle.loads(pickle.dumps(MediaError("decode", "truncated", "short", "/x.mp4")))
    assert (e.stage, e.reason, e.message, e.path) == ("decode", "truncated", "short", "/x.mp4")
    assert str(e).startswith("decode/truncated")
    with pytest.raises(MediaError, match="too_small"):
        media_mod.validate(probe(media.tiny()), min_side=64)
    with pytest.raises(MediaError, match="no_video_stream"):
        media_mod.validate(probe(media.audio_only()))
    with pytest.raises(MediaError, match="no_audio_stream"):
        media_mod.validate(probe(media.video_only()), need_audio=True)
    with pytest.raises(MediaError, match="too_short"):
        media_mod.validate(probe(data_dir / "00015.mp4"), min_duration_s=10)


# ------------------------------------------------------------------------------------- video
def _both(path, **kw):
    return video.read_frames(path, backend="decord", **kw), video.read_frames(path, backend="ffmpeg", **kw)


def test_backends_agree_on_real_clip(data_dir):
    d, f = _both(data_dir / "00015.mp4")
    assert d.shape == f.shape == (174, 224, 224, 3) and d.dtype == f.dtype == np.uint8
    assert np.abs(d.astype(int) - f).max() <= 2


def test_30fps_and_vfr_resample_to_25(media):
    for path, n_src in ((media.fps30(), 60), (media.vfr(), 23)):
        info = probe(path)
        assert info.n_frames_25 == round(info.duration_s * 25)  # exact: 2.0 s → 50, 1.96 s → 49
        d, f = _both(path)
        assert len(d) == len(f) == info.n_frames_25
        assert np.abs(d.astype(int) - f).max() <= 2
    assert not probe(media.fps30()).is_vfr and probe(media.vfr()).is_vfr
    assert video.choose_backend(probe(media.vfr())) == "ffmpeg"


def test_30fps_follows_ffmpeg_fps_filter_timing(media, data_dir):
    """Frame k shows the last source frame j with round(j·25/30) ≤ k (ties up): 0,1,2,4,5,6,7,8,10"""
    src = video.read_frames(media.fps30(), fps=30, backend="ffmpeg")  # identity at 30 fps
    out = video.read_frames(media.fps30())
    assert len(src) == 60
    expect = [0, 1, 2, 4, 5, 6, 7, 8, 10]
    for k, j in enumerate(expect):
        assert np.array_equal(out[k], src[j]), (k, j)


def test_rotation_swaps_dims(media, data_dir, tmp_path):
    path = media.rotated(90)
    info = probe(path)
    assert info.rotation in (90, 270) and (info.width, info.height) == (224, 224)
    rot = video.read_frames(path)  # auto → ffmpeg (rotation)
    plain = video.read_frames(data_dir / "00015.mp4")[: len(rot)]
    k = -info.rotation // 90  # clockwise display rotation → np.rot90's counter-clockwise turns
    assert np.abs(np.rot90(plain, k, axes=(1, 2)).astype(int) - rot).mean() < 2.0
    # non-square: dims really swap
    wide = make_rotated(tmp_path / "wide_rot.mp4", src=media.testsrc(2.0, "64x48"), degrees=90)
    wi = probe(wide)
    assert (wi.width, wi.height) == (48, 64)
    frames = video.read_frames(wide)
    assert frames.shape == (50, 64, 48, 3)


def test_auto_falls_back_for_codecs_decord_cannot_read(media, data_dir):
    ref = video.read_frames(data_dir / "00015.mp4")
    for path in (media.av1(), media.ten_bit()):
        info = probe(path)
        assert video.choose_backend(info) == "ffmpeg"
        out = video.read_frames(path)
        assert out.shape == (25, 224, 224, 3)
        assert np.abs(out.astype(int) - ref[:25]).mean() < 6  # lossy re-encode of the same frames
    if probe(media.av1()).video_codec == "av1":  # decord has no AV1 decoder
        with pytest.raises(MediaError) as e:
            video.read_frames(media.av1(), backend="decord")
        assert e.value.stage == "decode"


def test_truncated_and_streamless_files(media):
    with pytest.raises(MediaError) as e:
        video.read_frames(media.truncated())
    assert e.value.stage == "decode" and e.value.reason in ("truncated", "undecodable")
    with pytest.raises(MediaError) as e:
        next(video.iter_frames(media.audio_only()))
    assert (e.value.stage, e.value.reason) == ("decode", "no_video_stream")
    one = video.read_frames(media.one_frame())
    assert one.shape == (1, 224, 224, 3)


def test_hostile_file_name(media, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = media.hostile()
    assert probe(path).n_frames_25 == 174
    assert len(video.read_frames(path, backend="ffmpeg", max_side=32)) == 174
    assert len(audio.load_audio(path)) > 0
    assert not (tmp_path / "PWNED").exists() and not list(path.parent.glob("PWNED"))


@pytest.mark.parametrize("backend", ["decord", "ffmpeg"])
def test_chunks_bound_memory(media, backend):
    path = media.testsrc(seconds=40.0, size="96x64")  # 1000 frames
    frame_bytes = 96 * 64 * 3
    tracemalloc.start()
    try:
        n, shapes = 0, set()
        for block in video.iter_frames(path, chunk=16, backend=backend):
            shapes.add(block.shape[1:])
            assert 1 <= len(block) <= 16
            n += len(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 1000 and shapes == {(64, 96, 3)}
    assert peak < 8 * 16 * frame_bytes + 2_000_000 < n * frame_bytes  # never the whole video


def test_max_side_and_early_close(data_dir):
    path = data_dir / "liveportrait_d12.mp4"
    d, f = _both(path, max_side=128)
    assert d.shape == f.shape == (183, 128, 128, 3)
    assert np.abs(d.astype(int) - f).mean() < 3  # different resamplers, same picture
    gen = video.iter_frames(path, chunk=8, backend="ffmpeg")
    assert next(gen).shape == (8, 512, 512, 3)
    gen.close()  # kills the ffmpeg process, no hang


# ------------------------------------------------------------------------------------- audio
@pytest.mark.parametrize("backend", ["pyav", "ffmpeg"])  # tests/test_media_pyav.py: they agree
def test_load_audio_rates_and_channels(data_dir, media, backend):
    a = audio.load_audio(data_dir / "00015.mp4", backend=backend)
    assert a.dtype == np.float32 and a.ndim == 1 and np.abs(a).max() <= 1.0
    assert abs(len(a) - CLIP_S * 16000) <= 1024  # AAC ends on a 1024-sample frame
    w = audio.load_audio(data_dir / "david4.wav", backend=backend)  # 8 kHz mono
    assert len(w) == 30 * 16000
    s = audio.load_audio(data_dir / "liveportrait_d12.mp4", backend=backend)  # 44.1 kHz stereo
    assert abs(len(s) - probe(data_dir / "liveportrait_d12.mp4").audio_duration_s * 16000) <= 1024
    # stereo → mean of channels; a 44.1 kHz stereo wav of the 16 kHz clip matches the mono decode
    st = audio.load_audio(media.wav(44100, 2), backend=backend)
    assert abs(len(st) - len(a)) <= 1024
    n = min(len(st), len(a)) - 2000
    assert np.corrcoef(st[1000:n], a[1000:n])[0, 1] > 0.99
    with pytest.raises(MediaError) as e:
        audio.load_audio(media.video_only(), backend=backend)
    assert (e.value.stage, e.value.reason) == ("audio", "no_audio_stream")


@pytest.mark.parametrize("backend", ["pyav", "ffmpeg"])
def test_audio_sample_zero_is_first_video_frame(data_dir, tmp_path, backend):
    """A file whose video starts 0.2 s after its audio: sample 0 = first video frame's time."""
    src = data_dir / "00015.mp4"
    off = tmp_path / "late_video.mp4"
    ffmpeg("-i", f"file:{src}", "-itsoffset", "0.2", "-i", f"file:{src}", "-map", "1:v",
           "-map", "0:a", "-t", "3", "-c", "copy", f"file:{off}")
    info = probe(off)
    assert info.video_start_s == pytest.approx(0.2, abs=1e-3)
    aligned = audio.load_audio(off, info=info, backend=backend)
    raw = audio.load_audio(off, info=info, align_to_video=False, backend=backend)
    assert len(raw) - len(aligned) == 3200
    assert np.array_equal(aligned[:1000], raw[3200:4200])


# ------------------------------------------------------------------------------------- mel
def test_log_mel_matches_librosa(data_dir):
    wav = audio.load_audio(data_dir / "00015.mp4")
    L = audio.log_mel(wav)
    assert L.dtype == np.float32 and L.shape == (1 + len(wav) // 160, 80)
    y = scipy.signal.lfilter([1, -0.97], [1], wav)
    mel = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=1280, win_length=1280, hop_length=160,
                                         window="hann", center=True, pad_mode="reflect", n_mels=80,
                                         fmin=55, fmax=7600, htk=False, norm="slaney", power=1)
    ref = np.log10(np.maximum(mel, 1e-5)).T
    assert np.abs(L - ref).max() < 1e-3
    n = probe(data_dir / "00015.mp4").n_frames_25
    aligned = audio.align_mel_to_frames(L, n)
    assert aligned.shape == (4 * n, 80) and np.array_equal(aligned, L[: 4 * n])
    assert json.loads(json.dumps(audio.MEL_PARAMS))["n_fft"] == 1280


def test_mel_alignment_and_windows():
    mel = np.arange(10 * 80, dtype=np.float32).reshape(10, 80)
    padded = audio.align_mel_to_frames(mel, 3)  # 12 rows: last row repeated twice
    assert padded.shape == (12, 80) and np.array_equal(padded[10:], mel[[9, 9]])
    assert audio.align_mel_to_frames(mel, 2).shape == (8, 80)
    m = audio.align_mel_to_frames(np.repeat(np.arange(40.0)[:, None], 80, 1), 10)  # row r = r
    w0 = audio.mel_window(m, 0)[:, 0]
    assert w0.shape == (20,) and list(w0) == [0] * 8 + list(range(12))
    w5 = audio.mel_window(m, 5)[:, 0]
    assert list(w5) == list(range(12, 32))
    w9 = audio.mel_window(m, 9)[:, 0]
    assert list(w9) == list(range(28, 40)) + [39] * 8
    idx = np.arange(10)
    ws = audio.mel_windows(m, idx)
    assert ws.shape == (10, 20, 80)
    assert all(np.array_equal(ws[i], audio.mel_window(m, i)) for i in idx)
    with pytest.raises(ValueError, match="Expected mel"):
        audio.mel_window(np.zeros((10, 40)), 0)


def test_model_input_range():
    L = np.array([-5.0, -1.5, 0.0, 1.0, 3.0])
    expect = [-4.0, 0.0, 2.4, 4.0, 4.0]
    np.testing.assert_allclose(audio.model_input(L), expect, atol=1e-6)
    import torch
    out = audio.model_input(torch.tensor(L))
    assert isinstance(out, torch.Tensor) and np.allclose(out.numpy(), expect, atol=1e-6)
