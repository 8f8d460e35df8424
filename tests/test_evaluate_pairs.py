"""Generated and reference videos that disagree (time shift, provenance of the files scored) and
what a scheduled run's reports say about them.

Inputs are cut from tests/data at test time with ffmpeg (a second or two each); LPIPS and Sync
off (they play no part here).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from eval.config import EvalConfig
from preprocess import config as config_mod

from conftest import DATA_DIR, ffmpeg

OFF = ["lpips.enabled=false", "sync.enabled=false"]


def _cfg(*overrides):
    return config_mod.load(EvalConfig, None, [*OFF, *overrides])


@pytest.fixture(scope="module")
def models():
    from eval.models import EvalModels
    from preprocess.landmarks import get_backend

    return EvalModels(landmarks=get_backend("dlib"), lpips=None, syncnet=None)


def _encode(src: Path, dst: Path, vf: str | None, seconds: float, *extra) -> str:
    ffmpeg("-i", f"file:{src}", *(["-vf", vf] if vf else []), "-t", str(seconds), "-c:v", "libx264",
           "-preset", "ultrafast", "-crf", "18", *extra, f"file:{dst}")
    return str(dst)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    """1.6 s (40 frames) of 00015: the reference, and generated copies shifted in time."""
    d, c15 = tmp_path_factory.mktemp("pairs"), DATA_DIR / "00015.mp4"
    return {"ref": _encode(c15, d / "ref.mp4", None, 1.6, "-c:a", "aac"),
            "same": _encode(c15, d / "same.mp4", None, 1.6, "-c:a", "aac"),
            # the first frame held 5 extra frames, the length kept: generated t + 5 shows reference t
            "late5": _encode(c15, d / "late5.mp4", "tpad=start=5:start_mode=clone", 1.6, "-an")}


# ------------------------------------------------------------------------------- time shift
def test_a_generated_video_five_frames_late_is_a_frame_offset_reject(clips, models):
    """The offset probe tried generated t-2..t+2 only: a generated video 5 frames late (same length,
    within length_tolerance) scored PSNR 25 instead of 44 on the whole clip, unflagged (best_offset 2,
    gain 1.8 dB < 3), and a 3-frame shift was reported as 2. It now tries -12..+12 and names the shift."""
    from eval import clip as clip_mod

    with pytest.raises(clip_mod.PairReject) as e:
        clip_mod.evaluate_pair(clips["late5"], clips["ref"], _cfg(), models)
    assert e.value.reason == "frame_offset", e.value
    assert "generated frame t+5 matches reference frame t best" in e.value.message, e.value.message
    assert "runs 5 frames behind" in e.value.message and "offsets -12..+12 tried" in e.value.message
    row, _ = clip_mod.evaluate_pair(clips["same"], clips["ref"], _cfg(), models)
    assert (row["best_offset"], row["offset_gain_db"], row["frame_offset_flagged"]) == (0, 0.0, False)
    # a pair too short for the full reach probes as far as leaves 8 frames to sample (20 frames: -5..+5)
    with pytest.raises(clip_mod.PairReject, match=r"t\+5 matches .*mean of 8 frames .*offsets -5\.\.\+5 tried"):
        clip_mod.evaluate_pair(clips["late5"], clips["ref"], _cfg("max_frames=20"), models)
