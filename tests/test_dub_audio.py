"""Dubbing: the speech side — the audio files real bulk-dub jobs are given.

Inputs are made here from tests/data with ffmpeg; the RADIO weights are seeded random (the tests
check what the output carries and what is refused, not lip-sync quality).
"""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from conftest import DATA_DIR, ffmpeg
from preprocess import audio, media
from radio import dub
from radio.model.config import ModelConfig
from radio.model.radio import RADIO


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RADIO(ModelConfig(resolution=96)).eval()


@pytest.fixture(scope="module")
def backend():
    from preprocess.landmarks import get_backend

    return get_backend("dlib")


@pytest.fixture(scope="module")
def short_video(tmp_path_factory):
    """0.4 s of a real face (10 frames at 25 fps), no audio."""
    dst = tmp_path_factory.mktemp("video") / "v.mp4"
    ffmpeg("-i", f"file:{DATA_DIR / '00015.mp4'}", "-t", "0.4", "-an", "-c:v", "libx264", "-preset", "ultrafast",
           f"file:{dst}")
    return str(dst)


def _cfg(**kw) -> dub.DubConfig:
    return dub.DubConfig(batch_size=8, x264_preset="ultrafast", threads=1, **kw)


def _streams(path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name,sample_rate,channels",
                          "-of", "json", f"file:{path}"], capture_output=True, text=True, check=True).stdout
    return {s["codec_type"]: s for s in json.loads(out)["streams"]}


def test_speech_with_nan_samples_is_a_reject_before_any_work(tmp_path, short_video, model, backend):
    """A float WAV holding NaN (a broken TTS vocoder) decoded to NaN samples, so NaN mel rows (preprocess
    stored them as training data); dub ran the whole video, then the AAC encoder refused the speech
    ('ffmpeg_failed'). Now it is the decoder's reject, before anything is dubbed."""
    speech = tmp_path / "nan.wav"
    ffmpeg("-i", f"file:{DATA_DIR / 'david4.wav'}", "-t", "1", "-c:a", "pcm_f32le", f"file:{speech}")
    data = bytearray(speech.read_bytes())
    at = data.index(b"data") + 8
    samples = np.frombuffer(data, "<f4", count=(len(data) - at) // 4, offset=at).copy()
    samples[1000:1100] = np.nan
    data[at:at + samples.nbytes] = samples.tobytes()
    speech.write_bytes(bytes(data))

    with pytest.raises(media.MediaError) as e:
        audio.load_audio(str(speech))
    assert e.value.reason == "non_finite_samples"
    out = tmp_path / "out.mp4"
    with pytest.raises(dub.DubError) as e:
        dub.dub_clip(short_video, str(speech), str(out), model, backend, _cfg())
    assert (e.value.stage, e.value.reason) == ("audio", "non_finite_samples")
    assert not out.exists()
