"""Dubbing: paste-back geometry, and the bulk-dub pipeline end to end on a real clip.

The RADIO weights here are seeded random (no trained checkpoint can ship in the repo): the test
checks the plumbing — lengths, audio, paste-back region, rejects — not lip-sync quality.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from conftest import DATA_DIR, ffmpeg, make_testsrc
from preprocess import align, media, video
from radio import dub
from radio.model.config import ModelConfig
from radio.model.radio import RADIO


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[str, str]:
    torch.manual_seed(0)
    cfg = ModelConfig(resolution=96)
    model = RADIO(cfg)
    from preprocess.config import to_dict

    path = tmp_path_factory.mktemp("ckpt") / "radio.pt"
    torch.save({"model": model.state_dict(), "model_config": to_dict(cfg)}, path)
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


def test_paste_back_of_its_own_crop_leaves_frame_unchanged():
    frame = video.read_frames(str(DATA_DIR / "00015.mp4"), chunk=8)[0]
    from preprocess.landmarks import get_backend

    b = get_backend("dlib")
    det = max(b.detect(frame), key=lambda d: d.side)
    lm = b.fit(frame, det.box)
    affine = align.quad_to_affine(align.ffhq_quad(lm))
    crop = align.warp_face(frame, affine)
    mask = dub.lower_face_mask(align.apply_affine(affine, lm), 192, 0.04)
    out = dub.paste_back(frame, crop, mask, affine)
    touched = np.abs(out.astype(int) - frame.astype(int)).max(axis=-1) > 0
    # re-sampling its own crop changes pixels only slightly, and only under the mask's footprint
    assert np.abs(out.astype(int) - frame.astype(int)).mean() < 1.0
    ys, xs = np.nonzero(touched)
    assert ys.min() > align.apply_affine(align.invert_affine(affine), [[96, 60]])[0, 1]  # below the eyes
    # pasting a black crop darkens the mouth but not the forehead
    out2 = dub.paste_back(frame, np.zeros_like(crop), mask, affine)
    mouth = align.apply_affine(align.invert_affine(affine), [[96, 142]])[0].round().astype(int)
    eyes = align.apply_affine(align.invert_affine(affine), [[96, 70]])[0].round().astype(int)
    assert out2[mouth[1], mouth[0]].max() < 10
    assert (out2[eyes[1], eyes[0]] == frame[eyes[1], eyes[0]]).all()


def test_dub_pipeline_end_to_end(tmp_path, checkpoint):
    from pipelines import dub as dub_job

    ckpt, sha = checkpoint
    speech = tmp_path / "speech.wav"
    ffmpeg("-i", f"file:{DATA_DIR / 'david4.wav'}", "-t", "1.2", f"file:{speech}")
    faceless = make_testsrc(tmp_path / "noface.mp4", seconds=1.0, size="96x96")
    manifest = tmp_path / "pairs.jsonl"
    rows = [{"uri": str(DATA_DIR / "00015.mp4"), "audio_uri": str(speech), "name": "spk15 dubbed"},
            {"uri": str(faceless), "audio_uri": str(speech)},
            {"uri": str(DATA_DIR / "00086.mp4"), "audio_uri": str(tmp_path / "missing.wav")},
            {"uri": str(DATA_DIR / "00086.mp4")}]
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out"
    args = ["--direct_num_workers=1"]
    s = dub_job.run(str(manifest), ckpt, str(out), args, overrides=[f"checkpoint_sha256={sha}", "dub.batch_size=4"],
                    run_id="t1")
    assert s["pairs"] == 4 and s["dubbed"] == 1 and s["rejected"] == 3, s
    assert s["dubbed"] + s["rejected"] + s["skipped_resume"] == s["pairs"]
    assert set(s["rejects_by_reason"]) >= {"no_face", "no_audio_uri"}, s
    info = media.probe(str(out / "videos" / "spk15 dubbed.mp4"))
    assert info.has_audio and info.fps == 25 and abs(info.duration_s - 1.2) <= 0.08
    assert (info.width, info.height) == (224, 224)
    # upper face untouched by the paste-back (up to re-encoding noise)
    src = video.read_frames(str(DATA_DIR / "00015.mp4"))[:30]
    dubbed = video.read_frames(str(out / "videos" / "spk15 dubbed.mp4"))
    assert len(dubbed) == 30
    top = np.abs(dubbed[:, :60].astype(int) - src[:, :60].astype(int)).mean()
    bottom = np.abs(dubbed[:, 140:200, 60:160].astype(int) - src[:, 140:200, 60:160].astype(int)).mean()
    assert top < 3.0 and bottom > 2 * top, (top, bottom)
    # rerun: every pair is finished, nothing redone
    s2 = dub_job.run(str(manifest), ckpt, str(out), args, overrides=[f"checkpoint_sha256={sha}"], run_id="t2")
    assert s2["skipped_resume"] == 4 and s2["dubbed"] == 0


def test_dub_refuses_unpinned_checkpoint(tmp_path, checkpoint):
    from preprocess.weights import WeightsError
    from radio.train.checkpoint import load_generator

    with pytest.raises(WeightsError, match="sha256"):
        load_generator(checkpoint[0], None)
    with pytest.raises(WeightsError, match="expected"):
        load_generator(checkpoint[0], "0" * 64)
