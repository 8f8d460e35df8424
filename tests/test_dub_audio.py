"""Dubbing: the speech side — the audio files real bulk-dub jobs are given.

Inputs are made here from tests/data with ffmpeg; the RADIO weights are seeded random (the tests
check what the output carries and what is refused, not lip-sync quality).
"""
from __future__ import annotations

import hashlib
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
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                          "stream=codec_type,codec_name,sample_rate,channels",
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


def test_long_speech_mel_memory_does_not_grow_with_the_whole_stft(tmp_path, short_video, model, backend):
    """A 10-minute speech (an audiobook chapter over a short clip): one STFT over the whole speech
    held ~40 MB a minute at once (427 MB traced here; 1.4 GB RSS for 30 min, ~5.5 GB for the 2 h the
    limits allow). The mel is now computed in 60 s blocks (``audio.log_mel_blocked``): 98 MB here,
    most of it the decoded speech and its mel."""
    import tracemalloc

    speech = tmp_path / "long.wav"
    ffmpeg("-stream_loop", "19", "-i", f"file:{DATA_DIR / 'david4.wav'}", "-c:a", "pcm_s16le", f"file:{speech}")
    tracemalloc.start()
    try:
        stats = dub.dub_clip(short_video, str(speech), str(tmp_path / "out.mp4"), model, backend, _cfg(length="video"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stats["frames"] == 10 and stats["speech_seconds"] == pytest.approx(600, abs=0.1)
    assert peak < 200e6, f"{peak / 1e6:.0f} MB traced"


@pytest.mark.parametrize("codec", ["ac3", "eac3"])
def test_raw_dolby_speech_is_dubbed_and_stream_copied(tmp_path, short_video, model, backend, codec):
    """README: the speech is stream-copied for AC-3 (and E-AC-3, in COPY_CODECS); a raw .ac3/.eac3 file
    (a Dolby deliverable) was refused by the container allow-list ('unsupported_container')."""
    speech = tmp_path / f"speech.{codec}"
    ffmpeg("-i", f"file:{DATA_DIR / 'liveportrait_d12.mp4'}", "-vn", "-t", "0.6", "-c:a", codec, f"file:{speech}")
    out = tmp_path / "out.mp4"
    stats = dub.dub_clip(short_video, str(speech), str(out), model, backend, _cfg())
    assert stats["audio"] == "copy" and stats["audio_rate"] == 44100 and stats["audio_channels"] == 2
    a = _streams(out)["audio"]
    assert (a["codec_name"], a["sample_rate"], a["channels"]) == (codec, "44100", 2)


def test_speech_starting_late_on_its_timeline_counts_its_start_against_the_limit(tmp_path, short_video, model,
                                                                                  backend):
    """The speech is decoded from its file's start (silence before a late audio stream), but the limit
    looked at the audio stream's own length: a 53 KB mp4 (1 s of video, 1.6 s of speech at 3 h)
    passed max_duration_s=7200, decoded to 10,801 s (4 GB RSS) and would have dubbed 270,040 frames.
    Here at a small scale: a limit of 3 s, the speech ends at 3.5 s."""
    from preprocess.source import LimitsConfig

    speech = tmp_path / "late.mp4"
    ffmpeg("-i", f"file:{short_video}", "-itsoffset", "3", "-i", f"file:{DATA_DIR / 'david4.wav'}",
           "-map", "0:v", "-map", "1:a", "-t", "3.5", "-c:v", "copy", "-c:a", "aac", f"file:{speech}")
    info = media.probe(str(speech))
    assert info.audio_duration_s < 1 and info.audio_start_s > 2.8  # 3 s less the AAC priming
    out = tmp_path / "out.mp4"
    with pytest.raises(dub.DubError) as e:
        dub.dub_clip(short_video, str(speech), str(out), model, backend, _cfg(), limits=LimitsConfig(max_duration_s=3))
    assert (e.value.stage, e.value.reason) == ("audio", "too_long")
    assert not out.exists()
    # within the limit it is dubbed: its speech is as long as its timeline (silence first)
    stats = dub.dub_clip(short_video, str(speech), str(out), model, backend, _cfg(length="video"),
                         limits=LimitsConfig(max_duration_s=4))
    assert stats["speech_seconds"] == pytest.approx(3.5, abs=0.05)


def test_speech_longer_than_its_header_says_is_decoded_no_further_than_the_limit(tmp_path, short_video, model,
                                                                                 backend):
    """A raw ADTS .aac has no length in it: the probe estimates one from the first frames' bitrate. Loud
    speech then near-silent frames (a few bytes each) estimate far short: 3 s of noise + 120 s of
    silence said 5.3 s and decoded 123 s (3 h of silence would pass a 2 h limit the same way). The
    decoder now stops at the limit (+1 s) and the pair is 'too_long'."""
    from preprocess.source import LimitsConfig

    speech = tmp_path / "speech.aac"
    ffmpeg("-f", "lavfi", "-i", "anoisesrc=d=0.5:a=0.5:r=48000", "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono",
           "-filter_complex", "[1]atrim=0:5[s];[0][s]concat=n=2:v=0:a=1", "-c:a", "aac", "-b:a", "256k",
           "-f", "adts", f"file:{speech}")
    assert media.probe(str(speech)).audio_duration_s < 2
    with pytest.raises(dub.DubError) as e:
        dub.dub_clip(short_video, str(speech), str(tmp_path / "out.mp4"), model, backend, _cfg(),
                     limits=LimitsConfig(max_duration_s=2))
    assert (e.value.stage, e.value.reason) == ("audio", "too_long")


def test_speech_of_a_video_file_starting_after_its_video_is_covered_to_its_end(tmp_path, short_video, model, backend):
    """A speech mp4 (a recording with its camera video) whose audio starts 56 ms after the video: the
    decoded speech ran 56 ms past the stream's declared length, which was taken for codec padding,
    so the output video ended a frame before its speech (30 frames for 1.217 s here; 41 for 1.68 s)."""
    speech = tmp_path / "speech.mp4"
    ffmpeg("-i", f"file:{DATA_DIR / '00086.mp4'}", "-itsoffset", "0.08",
           "-i", f"file:{DATA_DIR / 'liveportrait_d12.mp4'}", "-map", "0:v", "-map", "1:a", "-t", "1.2",
           "-c:v", "copy", "-c:a", "aac", f"file:{speech}")
    info = media.probe(str(speech))
    end = info.audio_start_s + info.audio_duration_s
    assert 0.03 < info.audio_start_s < 0.1
    stats = dub.dub_clip(short_video, str(speech), str(tmp_path / "out.mp4"), model, backend, _cfg())
    assert stats["frames"] == int(np.ceil(end * 25 - 1e-9)), (stats["frames"], end)


def test_low_rate_mp3_speech_is_reencoded_not_refused(tmp_path, short_video, model, backend):
    """An 8 kHz MP3 (telephony, voicemail) was stream-copied, and ffmpeg's MP4 muxer refuses MP3 below
    16 kHz ('muxing mp3 at 8000hz is not standard'): a valid speech became a reject 'ffmpeg_failed'.
    It is now AAC at its own rate and channels."""
    speech = tmp_path / "phone.mp3"
    ffmpeg("-i", f"file:{DATA_DIR / 'david4.wav'}", "-t", "0.6", "-c:a", "libmp3lame", f"file:{speech}")
    assert media.probe(str(speech)).audio_rate == 8000
    out = tmp_path / "out.mp4"
    stats = dub.dub_clip(short_video, str(speech), str(out), model, backend, _cfg())
    assert stats["audio"] == "aac 128k" and stats["audio_rate"] == 8000
    a = _streams(out)["audio"]
    assert (a["codec_name"], a["sample_rate"], a["channels"]) == ("aac", "8000", 1)
    # from 16 kHz MP4 holds MP3: still a stream copy
    speech16 = tmp_path / "wide.mp3"
    ffmpeg("-i", f"file:{speech}", "-ar", "16000", "-c:a", "libmp3lame", f"file:{speech16}")
    plan = dub.audio_plan(media.probe(str(speech16)), _cfg(), 0.6, 0.6)
    assert plan["audio"] == "copy"


def test_a_reject_line_says_which_input_and_why(tmp_path):
    """pairs.jsonl / summary.json: a pair whose video was missing was listed as
    {"audio": "<the speech>", "reason": "not_found"} — the speech URI under 'audio' (a dubbed line's
    'copy' / 'aac 128k'), as if the speech were missing. Now: stage and message, no 'audio'."""
    from pipelines import dub as dub_job
    from preprocess.config import to_dict

    torch.manual_seed(0)
    ckpt = tmp_path / "radio.pt"
    cfg = ModelConfig(resolution=96)
    torch.save({"model": RADIO(cfg).state_dict(), "model_config": to_dict(cfg)}, ckpt)
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text(json.dumps({"uri": str(tmp_path / "gone.mp4"), "audio_uri": str(DATA_DIR / "david4.wav"),
                                    "name": "p"}) + "\n")
    s = dub_job.run(str(manifest), str(ckpt), str(tmp_path / "out"), ["--direct_num_workers=1"],
                    overrides=[f"checkpoint_sha256={sha}", "device=cpu"], run_id="r1")
    (line,) = s["pairs_list"]
    assert line["reason"] == "not_found" and "audio" not in line
    assert line["stage"] == "probe" and "gone.mp4" in line["message"]
    (listed,) = [json.loads(x) for x in open(s["pairs_file"])]
    assert listed == line


@pytest.mark.parametrize("missing", [None, "", "   "])
def test_a_later_line_without_speech_is_refused_up_front_naming_it(tmp_path, missing):
    """A manifest is checked whole before any work: a missing audio_uri on line 1 was exit 2, on
    any later line a per-pair reject after the job started; a blank one resolved to the manifest's
    folder (an 'unsupported_container' reject)."""
    import json

    from pipelines import dub as dub_job
    from preprocess.sources import SourceError

    good = {"uri": str(DATA_DIR / "00015.mp4"), "audio_uri": str(DATA_DIR / "david4.wav")}
    bad = {"uri": str(DATA_DIR / "00086.mp4"), "name": "b"}
    if missing is not None:
        bad["audio_uri"] = missing
    m = tmp_path / "pairs.jsonl"
    m.write_text("\n".join(json.dumps(r) for r in (good, bad)))
    with pytest.raises(SourceError, match=r"pairs\.jsonl:2: no 'audio_uri'"):
        dub_job.check_pairs(str(m), str(tmp_path / "out"))


def _lag(a: np.ndarray, b: np.ndarray, reach: int = 6400) -> int:
    """The shift k (samples) for which b[i] best matches a[i + k], over 0.5 s of b."""
    w = b[reach:reach + 8000]
    errs = [np.abs(a[reach + k:reach + k + len(w)] - w).mean() for k in range(-reach, reach + 1)]
    return int(np.argmin(errs)) - reach


def test_a_video_dubbed_with_its_own_speech_keeps_its_sync_from_its_first_frame(tmp_path, model, backend):
    """A video dubbed with its own speech (a re-dub, to be scored against the original) whose video starts
    after its audio: a TS capture cut mid-GOP (its first frames do not decode: frame 0 is 0.168 s past
    the audio's start here) and an MKV whose video starts 0.564 s late. The speech was taken from its
    file's start: the output played the audio 4 and 14 frames early against the picture (the model
    heard it so too), and lasted that much longer than the video (55 frames for 50, 64 for 49). Now the
    video's own speech starts at its frame 0 (sample-exact, re-encoded), as preprocess pairs them;
    another file's speech still starts at that file's start."""
    full, cut, late = tmp_path / "full.ts", tmp_path / "cut.ts", tmp_path / "late.mkv"
    ffmpeg("-i", f"file:{DATA_DIR / '00015.mp4'}", "-t", "3", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
           "-bf", "0", "-c:a", "aac", "-f", "mpegts", f"file:{full}")
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "packet=pos,flags",
                          "-of", "json", f"file:{full}"], capture_output=True, text=True, check=True).stdout
    packets = json.loads(out)["packets"]
    key = next(i for i, p in enumerate(packets) if i >= 20 and "K" in p["flags"])
    cut.write_bytes(full.read_bytes()[int(packets[key - 2]["pos"]) // 188 * 188:])   # 2 frames before a keyframe
    ffmpeg("-itsoffset", "0.5", "-i", f"file:{full}", "-i", f"file:{full}", "-map", "0:v", "-map", "1:a", "-t", "2.5",
           "-c", "copy", f"file:{late}")
    for src in (cut, late):
        info = media.probe(str(src))
        assert info.video_start_s > 0.1, (src.name, info.video_start_s)
        dubbed = tmp_path / f"{src.stem}.mp4"
        stats = dub.dub_clip(str(src), str(src), str(dubbed), model, backend, _cfg())
        # as long as the video (its audio ends with it), not its audio's head start longer
        assert abs(stats["frames"] - info.n_frames_25) <= 1, (src.name, stats["frames"], info.n_frames_25)
        assert stats["audio"] == "aac 128k"
        # the output's audio is the source's from its first frame on
        want = audio.load_audio(str(src), info=info)                  # sample 0 at frame 0 (preprocess's)
        assert abs(_lag(want, audio.load_audio(str(dubbed)))) <= 16, src.name
    # another file's speech still starts at that file's start (a late video there is not the dub's)
    stats = dub.dub_clip(str(cut), str(late), str(tmp_path / "other.mp4"), model, backend, _cfg())
    assert stats["audio"] == "copy"
    assert abs(_lag(audio.load_audio(str(late), align_to_video=False), audio.load_audio(str(tmp_path / "other.mp4")))) <= 16
