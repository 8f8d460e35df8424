"""Dataset-scale evaluation (issue "Dataset-scale evaluation"): pairing, the per-pair scorer, the
Beam job end to end on real clips, idempotent reruns, rejects, reports.

Networks are SEEDED RANDOM (LPIPS backbone, SyncNet) and labelled so: these tests check plumbing,
identities and labelling, never published numbers. Inputs are cut to a few dozen frames.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from eval import clip as clip_mod
from eval import pairs as pairs_mod
from eval import report, results
from eval.config import EvalConfig
from eval.metrics import lpips as lp
from eval.metrics import syncnet as sn
from preprocess import config as config_mod
from preprocess.weights import WeightsError

from conftest import DATA_DIR, ffmpeg, make_testsrc

LPIPS_LABEL = "random backbone (test)"


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict:
    """Seeded random AlexNet (torchvision key format) and SyncNet files, with their digests."""
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in lp.alexnet_features().state_dict().items()}, d / "alex.pth")
    torch.manual_seed(0)
    torch.save({k: v for k, v in sn.SyncNet().state_dict().items() if "num_batches" not in k}, d / "syncnet.model")
    return {"alex": str(d / "alex.pth"), "alex_sha": _sha(d / "alex.pth"),
            "sync": str(d / "syncnet.model"), "sync_sha": _sha(d / "syncnet.model")}


def _lpips_overrides(w: dict) -> list[str]:
    return [f"lpips.backbone_uri={w['alex']}", f"lpips.backbone_sha256={w['alex_sha']}", f"lpips.label={LPIPS_LABEL}"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """A pairs manifest: three clips against themselves, an x264 crf-45 copy, a 3 s cut (length
    mismatch) and a generated file that does not exist."""
    root = tmp_path_factory.mktemp("eval_inputs")
    gen = root / "gen"
    gen.mkdir()
    for name in ("00015", "00086", "retalking_face5"):
        shutil.copyfile(DATA_DIR / f"{name}.mp4", gen / f"{name}.mp4")
    ffmpeg("-i", f"file:{DATA_DIR / '00015.mp4'}", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "45",
           "-pix_fmt", "yuv420p", "-c:a", "copy", f"file:{gen / '00015_crf45.mp4'}")
    ffmpeg("-i", f"file:{DATA_DIR / '00015.mp4'}", "-t", "3", "-c:v", "libx264", "-preset", "ultrafast",
           "-c:a", "aac", f"file:{gen / '00015_short.mp4'}")
    rows = [("gen/00015.mp4", "00015.mp4", "identity", "00015"),
            ("gen/00086.mp4", "00086.mp4", "identity", "00086"),
            ("gen/retalking_face5.mp4", "retalking_face5.mp4", "identity", "retalking_face5"),
            ("gen/00015_crf45.mp4", "00015.mp4", "x264-crf45", "00015"),
            ("gen/00015_short.mp4", "00015.mp4", "identity", "00015_short"),
            ("gen/absent.mp4", "00086.mp4", "identity", "absent")]
    manifest = root / "pairs.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["generated", "reference", "method", "key"])
        for g, r, m, k in rows:
            w.writerow([g, str(DATA_DIR / r), m, k])
    return {"root": root, "manifest": str(manifest), "out": str(root / "out")}


def _read_run(run_dir: Path) -> dict:
    return {"summary": json.loads((run_dir / "summary.json").read_text()),
            "metrics": pq.read_table(run_dir / "metrics.parquet").to_pylist(),
            "rejects": pq.read_table(run_dir / "rejects.parquet").to_pylist(),
            "frames": pq.read_table(run_dir / "frames.parquet").to_pylist(),
            "md": (run_dir / "summary.md").read_text(), "csv": (run_dir / "summary.csv").read_text(),
            "html": (run_dir / "report.html").read_text()}


@pytest.fixture(scope="module")
def first_run(inputs, weights) -> dict:
    """The whole Beam job (in-process FnApiRunner), 20 frames per pair, LPIPS with a random backbone."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    from pipelines import evaluate as job

    summary = job.run(inputs["manifest"], inputs["out"], dataset="testset", run_id="r1",
                      overrides=["max_frames=20", "sync.enabled=false", *_lpips_overrides(weights)],
                      test_pipeline=beam.Pipeline(runner=fn_runner.FnApiRunner()))
    out = _read_run(Path(inputs["out"]) / "runs" / "r1")
    assert summary == out["summary"]
    return out


def _by(rows, method, key):
    (row,) = [r for r in rows if r["method"] == method and r["key"] == key]
    return row


# ------------------------------------------------------------------------------- end to end
def test_identity_pairs_score_as_identity(first_run, weights):
    rows = [r for r in first_run["metrics"] if r["method"] == "identity"]
    assert sorted(r["key"] for r in rows) == ["00015", "00086", "retalking_face5"]
    for r in rows:
        assert r["psnr"] == 100.0
        assert r["ms_ssim"] == pytest.approx(1.0, abs=1e-6)
        assert r["lpips"] == 0.0
        assert r["lmd"] == 0.0
        assert r["n_frames"] == r["n_frames_compared"] == 20 and r["face_coverage"] == 1.0
        assert r["protocol"] == "radio-v1" and r["crop_size"] == 256 and r["landmark_backend"] == "dlib"
        assert json.loads(r["landmark_weights"])  # predictor file -> sha256
        assert r["lpips_official_weights"] is False and r["lpips_label"] == LPIPS_LABEL
        assert r["lpips_backbone_sha256"] == weights["alex_sha"]
        assert r["sync_missing"] is None and r["sync_c"] is None  # Sync disabled in this run
        assert r["run_id"] == "r1" and r["dataset"] == "testset"


def test_degraded_copy_scores_worse(first_run):
    ident, bad = _by(first_run["metrics"], "identity", "00015"), _by(first_run["metrics"], "x264-crf45", "00015")
    assert 15 < bad["psnr"] < 40 < ident["psnr"]
    assert 0.5 < bad["ms_ssim"] < 0.99
    assert bad["lpips"] > 0 and bad["lmd"] > 0
    frames = {f["pair_id"]: f for f in first_run["frames"]}[bad["pair_id"]]
    assert len(frames["psnr"]) == len(frames["lmd"]) == len(frames["frame_index"]) == bad["n_frames"]
    assert np.mean(frames["psnr"]) == pytest.approx(bad["psnr"], rel=1e-5)


def test_rejects_have_reasons_and_counts_add_up(first_run):
    s = first_run["summary"]
    assert (s["inputs"], s["scored"], s["rejected"]) == (6, 4, 2) and s["counts_add_up"] is True
    assert s["rejects_by_reason"] == {"length_mismatch": 1, "missing_file": 1}
    rej = {r["key"]: r for r in first_run["rejects"]}
    assert rej["00015_short"]["reason"] == "length_mismatch" and rej["00015_short"]["side"] == "pair"
    assert "75" in rej["00015_short"]["message"] and "174" in rej["00015_short"]["message"]
    assert "--set length_tolerance=N" in rej["00015_short"]["message"]  # names the key that changes it
    assert rej["absent"]["reason"] == "missing_file" and rej["absent"]["side"] == "generated"
    assert {g["method"]: (g["scored"], g["rejected"]) for g in s["groups"]} == {"identity": (3, 2), "x264-crf45": (1, 0)}


def test_reports_hold_the_numbers(first_run):
    bad = _by(first_run["metrics"], "x264-crf45", "00015")
    md, html = first_run["md"], first_run["html"]
    assert "| Method | testset PSNR↑ | testset MS-SSIM↑ | testset LPIPS↓ | testset Sync-C↑ | testset Sync-D↓ | testset LMD↓ |" in md
    assert "| identity | 100.00 ± 0.00 | 1.0000 ± 0.0000 | 0.0000 ± 0.0000† |" in md
    assert f"| x264-crf45 | {bad['psnr']:.2f} | {bad['ms_ssim']:.4f} | {bad['lpips']:.4f}† | disabled | disabled | {bad['lmd']:.3f} |" in md  # Sync off
    assert "6 pairs = 4 scored + 2 rejected (length_mismatch 1, missing_file 1)" in md
    assert "unofficial weights (random backbone (test))" in md and "Student-t" in md
    table = {r["method"]: r for r in csv.DictReader(io.StringIO(first_run["csv"]))}
    assert float(table["x264-crf45"]["testset/psnr/mean"]) == pytest.approx(bad["psnr"])
    assert table["x264-crf45"]["testset/psnr/ci95"] == ""  # one clip: no interval
    assert float(table["identity"]["testset/lmd/mean"]) == 0.0 and table["identity"]["testset/lmd/n"] == "3"
    assert table["identity"]["testset/lpips/unofficial"] == LPIPS_LABEL
    assert html.startswith("<!doctype html>") and "data:image/png;base64," in html
    assert f"{bad['psnr']:.2f}" in html and "length_mismatch" in html and "scored + rejected + unpaired = listed" in html
    assert "<script" not in html and "src='http" not in html  # self-contained


def test_rerun_same_run_id_overwrites_through_the_cli(first_run, inputs):
    """Same run id, same pairs, cheaper settings: the run's files are replaced, never appended."""
    from radio import cli

    rc = cli.main(["evaluate", "--generated", inputs["manifest"], "--output", inputs["out"], "--run-id", "r1",
                   "--dataset", "testset", "--set", "lpips.enabled=false", "--set", "sync.enabled=false",
                   "--set", "max_frames=8", "--direct_num_workers=1"])
    assert rc == 0
    run_dir = Path(inputs["out"]) / "runs" / "r1"
    again = _read_run(run_dir)
    assert len(again["metrics"]) == 4 and len({r["pair_id"] for r in again["metrics"]}) == 4
    assert len(again["rejects"]) == 2 and len(again["frames"]) == 4
    assert {r["pair_id"] for r in again["metrics"]} == {r["pair_id"] for r in first_run["metrics"]}
    assert all(r["lpips"] is None and r["n_frames"] == 8 for r in again["metrics"])
    assert again["summary"]["counts_add_up"] and again["summary"]["inputs"] == 6
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".tmp")]
    assert sorted(p.name for p in (Path(inputs["out"]) / "runs").iterdir()) == ["r1"]


def test_a_run_that_scores_no_pair_exits_1_with_one_line(inputs, capsys):
    """Every pair rejected: the run, its rejects and its (empty) report are written, but the exit
    status is 1 with one line saying so (it was 0: a nightly run that scored nothing looked like
    a success to cron)."""
    from radio import cli

    manifest = Path(inputs["root"]) / "all_rejected.csv"
    lines = Path(inputs["manifest"]).read_text().splitlines()
    manifest.write_text("\n".join([lines[0]] + [x for x in lines if "_short" in x or "absent" in x]) + "\n")
    out = Path(inputs["root"]) / "out_none"
    rc = cli.main(["evaluate", "--generated", str(manifest), "--output", str(out), "--run-id", "none",
                   "--dataset", "testset", "--set", "lpips.enabled=false", "--set", "sync.enabled=false",
                   "--set", "max_frames=8", "--direct_num_workers=1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "radio evaluate: no pair was scored (2 rejected, 0 unpaired)" in err, err
    run = _read_run(out / "runs" / "none")
    assert run["summary"]["scored"] == 0 and len(run["rejects"]) == 2 and run["summary"]["counts_add_up"]
    assert "No pair was scored" in run["md"]


def test_a_killed_rerun_never_looks_complete(tmp_path, monkeypatch):
    """Rerunning a run id used to keep the earlier run's summary.json and reports until the last
    step: a rerun killed halfway left the new shards next to a summary claiming a complete run.
    Now the earlier run (summary.json first, reports, spread, every shard, temp files) is gone
    before the job starts; here the job dies on its pairs (an environment failure)."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    from pipelines import evaluate as job

    run = tmp_path / "out" / "runs" / "r"
    earlier = [run / n for n in results.RUN_FILES] + [
        run / "metrics.parquet" / f"part-{i:05d}.parquet" for i in range(3)] + [
        run / "frames.parquet" / "part-00007.parquet", run / "rejects.parquet" / ".tmp-ab-part-00000.parquet",
        run / ".tmp-cd-summary.json"]
    for f in earlier:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"earlier run")
    (run / "job.log").write_text("earlier log")

    def killed(*a):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(clip_mod, "evaluate_pair", killed)
    (tmp_path / "gen").mkdir()
    shutil.copyfile(DATA_DIR / "00015.mp4", tmp_path / "gen" / "00015.mp4")
    with pytest.raises(Exception) as e:
        job.run(str(tmp_path / "gen"), str(tmp_path / "out"), reference=str(DATA_DIR), run_id="r",
                overrides=["lpips.enabled=false", "sync.enabled=false"],
                test_pipeline=beam.Pipeline(runner=fn_runner.FnApiRunner()))
    assert "Input/output error" in str(e.value)
    assert [str(f) for f in earlier if f.exists()] == []
    assert not (run / "summary.json").exists()


# ------------------------------------------------------------------------------- one pair
def test_sync_with_random_weights_is_labelled_unofficial(weights):
    cfg = config_mod.load(EvalConfig, None, [
        "max_frames=40", "lpips.enabled=false", f"sync.weights_uri={weights['sync']}",
        f"sync.weights_sha256={weights['sync_sha']}", "sync.label=random (test)", "sync.track={min_track: 20}"])
    from eval.models import load_models

    models = load_models(cfg)
    clip = str(DATA_DIR / "retalking_face5.mp4")
    row, frames = clip_mod.evaluate_pair(clip, clip, cfg, models)
    assert row["sync_missing"] is False and math.isfinite(row["sync_c"]) and row["sync_d"] > 0
    assert 20 < row["sync_n_windows"] <= 35 and abs(row["sync_offset"]) <= 15
    assert row["sync_official_weights"] is False and row["sync_label"] == "random (test)"
    assert row["syncnet_sha256"] == weights["sync_sha"] and "not S3FD" in row["sync_boxes"]
    assert json.loads(row["sync_track_config"])["min_track"] == 20
    assert row["lpips"] is None and frames["lpips"] is None
    assert len(frames["sample_frames"]) == cfg.sample_frames and frames["sample_png"].startswith(b"\x89PNG")
    md = report.table_markdown([{**row, "dataset": "d", "method": "m"}])
    assert "‡" in md and "unofficial SyncNet weights (random (test))" in md


def test_no_face_is_a_reject(tmp_path):
    """A reference without a face (lavfi test pattern) is a typed no_face reject."""
    from eval.models import EvalModels
    from preprocess.landmarks import get_backend

    src = make_testsrc(tmp_path / "pattern.mp4", seconds=1.0, size="224x224")
    cfg = config_mod.load(EvalConfig, None, ["lpips.enabled=false", "sync.enabled=false"])
    models = EvalModels(landmarks=get_backend("dlib"), lpips=None, syncnet=None)
    with pytest.raises(clip_mod.PairReject) as e:
        clip_mod.evaluate_pair(str(src), str(src), cfg, models)
    assert e.value.reason == "no_face" and e.value.side == "reference"
    bad = tmp_path / "text.mp4"
    bad.write_text("not a video\n" * 20)
    with pytest.raises(clip_mod.PairReject) as e:
        clip_mod.evaluate_pair(str(bad), str(src), cfg, models)
    assert e.value.reason == "undecodable" and e.value.side == "generated"


def test_other_aspect_ratio_is_a_reject_same_aspect_is_resized(tmp_path):
    """A generated video of another aspect ratio (398x224 against 224x224) used to be stretched to
    the reference's frame and scored (only generated_resized said so); now an aspect_mismatch
    reject at probe. A same-aspect resize is scored and counted in the summary."""
    from eval.models import EvalModels
    from preprocess.landmarks import get_backend

    ref = str(DATA_DIR / "00015.mp4")  # 224x224
    for name, size in (("wide", "398:224"), ("half", "112:112")):   # setsar=1: square pixels, a wide picture
        ffmpeg("-i", f"file:{ref}", "-t", "0.4", "-vf", f"scale={size},setsar=1", "-c:v", "libx264", "-preset", "ultrafast",
               "-an", f"file:{tmp_path / name}.mp4")
    cfg = config_mod.load(EvalConfig, None, ["lpips.enabled=false", "sync.enabled=false", "max_frames=6",
                                              "length_tolerance=1000"])
    models = EvalModels(landmarks=get_backend("dlib"), lpips=None, syncnet=None)
    with pytest.raises(clip_mod.PairReject) as e:
        clip_mod.evaluate_pair(str(tmp_path / "wide.mp4"), ref, cfg, models)
    assert (e.value.reason, e.value.side, e.value.stage) == ("aspect_mismatch", "pair", "probe")
    assert "398x224" in e.value.message and "224x224" in e.value.message
    row, _ = clip_mod.evaluate_pair(str(tmp_path / "half.mp4"), ref, cfg, models)
    assert row["generated_resized"] is True and 15 < row["psnr"] < 100
    row = {**row, "pair_id": "p", "key": "k", "dataset": "d", "method": "m"}
    s = results.summarise([row], [], 1)
    assert s["generated_resized"] == 1
    assert "resized to the reference's frame size (same aspect ratio): 1 clip." in report.table_markdown([row], {**s, "run_id": "x"})
    # aspect as displayed: the 224x224 square-pixel clip shows the picture a 168x224 reference with
    # 4:3 pixels (anamorphic) shows: scored, not rejected, and both decode to the same square-pixel
    # frames (preprocess.video), so nothing is resized
    ffmpeg("-i", f"file:{ref}", "-t", "0.4", "-vf", "scale=168:224,setsar=4/3", "-c:v", "libx264", "-preset",
           "ultrafast", "-an", f"file:{tmp_path / 'anamorphic.mp4'}")
    row, _ = clip_mod.evaluate_pair(ref, str(tmp_path / "anamorphic.mp4"), cfg, models)
    assert row["generated_resized"] is False and row["psnr"] > 20


def test_missing_weights_fail_unless_the_metric_is_off(tmp_path, inputs):
    from eval.models import check_weights, load_models
    from pipelines import evaluate as job

    cfg = EvalConfig()
    with pytest.raises(WeightsError, match=r"lpips.enabled=false"):
        check_weights(cfg)
    with pytest.raises(WeightsError, match=r"LPIPS AlexNet backbone.*lpips.enabled=false"):
        load_models(cfg)
    cfg = config_mod.load(EvalConfig, None, ["lpips.enabled=false"])
    with pytest.raises(WeightsError, match=r"SyncNet.*sync.enabled=false"):
        load_models(cfg)
    cfg = config_mod.load(EvalConfig, None, ["lpips.enabled=false", "sync.enabled=false"])
    check_weights(cfg)
    assert load_models(cfg).describe()["landmark_backend"] == "dlib"

    class Args:
        generated, reference, output, run_id = inputs["manifest"], None, str(tmp_path / "o"), None
        dataset, method, config, overrides = "d", "m", None, []
    assert job.main(Args, []) == 2  # weights missing: refused before any work
    assert not (tmp_path / "o").exists()


def test_generated_side_listing_nothing_keeps_the_earlier_run(tmp_path):
    """An empty generated folder (or a glob matching nothing) used to exit 0 with every reference
    unpaired and replace the run of the same id (the day's run, by default) with an empty one:
    now a one-line mistake (exit 2) before the output is touched."""
    from pipelines import evaluate as job

    (tmp_path / "gen").mkdir()
    earlier = tmp_path / "o" / "runs" / "r" / "summary.json"
    earlier.parent.mkdir(parents=True)
    earlier.write_text('{"scored": 5}')
    for gen in (str(tmp_path / "gen"), str(tmp_path / "gen" / "*.mp5")):
        class Args:
            generated, reference, output, run_id = gen, str(DATA_DIR), str(tmp_path / "o"), "r"
            dataset, method, config, overrides = None, None, None, ["lpips.enabled=false", "sync.enabled=false"]
            no_progress = True
        assert job.main(Args, []) == 2
        with pytest.raises(pairs_mod.PairsError, match="--generated .*lists no video files"):
            list(pairs_mod.list_pairs(gen, str(DATA_DIR)))
    assert earlier.read_text() == '{"scored": 5}' and sorted(p.name for p in earlier.parent.iterdir()) == ["summary.json"]


# ------------------------------------------------------------------------------- pairing
def _touch(root: Path, *names):
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"")


def test_pairs_by_relative_path(tmp_path):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    _touch(gen, "a.mp4", "sub/b c.mp4", "only_gen.mp4", "notes.txt")
    _touch(ref, "a.mov", "sub/b c.mp4", "only_ref.mp4")
    pairs = list(pairs_mod.list_pairs(str(gen), str(ref), dataset="D", method="M"))
    got = {p["key"]: (p["generated"], p["reference"]) for p in pairs}
    assert got == {"a": (str(gen / "a.mp4"), str(ref / "a.mov")),
                   "sub/b c": (str(gen / "sub/b c.mp4"), str(ref / "sub/b c.mp4")),
                   "only_gen": (str(gen / "only_gen.mp4"), None), "only_ref": (None, str(ref / "only_ref.mp4"))}
    assert len({p["pair_id"] for p in pairs}) == 4 and all(p["dataset"] == "D" for p in pairs)
    glob_pairs = list(pairs_mod.list_pairs(str(gen / "*.mp4"), str(ref)))
    assert {p["key"] for p in glob_pairs} == {"a", "only_gen", "only_ref", "sub/b c"}  # sub/ not globbed: unpaired ref
    _touch(ref, "a.mkv")  # now a.mp4 matches a.mov and a.mkv
    with pytest.raises(pairs_mod.PairsError, match="several references"):
        list(pairs_mod.list_pairs(str(gen), str(ref)))
    with pytest.raises(pairs_mod.PairsError, match="--reference is required"):
        list(pairs_mod.list_pairs(str(gen)))


def test_existing_names_with_glob_characters_are_literal(tmp_path):
    """Folders and manifests whose names hold '[', ']', '?' or '*' used to be globbed (matching
    nothing, or other files); an existing path is now used as written, a missing one is a glob."""
    gen, ref = tmp_path / "gen[1]", tmp_path / "ref [a]?"
    _touch(gen, "a.mp4")
    _touch(ref, "a.mp4", "b.mp4")
    _touch(tmp_path / "gen1", "other.mp4")  # what gen[1] means as a glob
    pairs = list(pairs_mod.list_pairs(str(gen), str(ref)))
    assert {p["key"]: (p["generated"], p["reference"]) for p in pairs} == {
        "a": (str(gen / "a.mp4"), str(ref / "a.mp4")), "b": (None, str(ref / "b.mp4"))}
    assert pairs_mod.default_names(str(gen), str(ref)) == ("ref [a]?", "gen[1]")
    # a `radio dub` output's videos/ is named after the dub output (every one used to be "videos")
    assert pairs_mod.default_names(str(tmp_path / "wav2lip_dub" / "videos") + "/", str(ref))[1] == "wav2lip_dub"
    m = tmp_path / "m[2].jsonl"
    m.write_text('{"generated": "gen[1]/a.mp4", "reference": "ref [a]?/a.mp4"}\n')
    assert pairs_mod.is_manifest(str(m)) and pairs_mod.default_names(str(m), None)[1] == "m[2]"
    # ... and so is its evaluate_pairs.jsonl (it was dataset "wav2lip_dub", method "evaluate_pairs")
    dub_manifest = tmp_path / "wav2lip_dub" / "evaluate_pairs.jsonl"
    assert pairs_mod.default_names(str(dub_manifest), None) == ("dataset", "wav2lip_dub")
    assert pairs_mod.default_names(str(dub_manifest), str(ref)) == ("ref [a]?", "wav2lip_dub")
    assert [p["generated"] for p in pairs_mod.list_pairs(str(m))] == [str(gen / "a.mp4")]
    assert {p["key"] for p in pairs_mod.list_pairs(str(tmp_path / "gen?" / "*.mp4"), str(ref)) if p["generated"]} == {"gen1/other"}


def test_only_allowed_schemes_are_read(tmp_path):
    """A manifest naming http:// or ftp:// videos used to be fetched over the network; now, as in
    `radio preprocess` (input.schemes, default file, gs, memory; 16 GiB per video), it is refused
    while listing, and a worker given such a pair rejects it before opening anything."""
    from eval.models import EvalModels

    m = tmp_path / "pairs.jsonl"
    for scheme in ("http", "ftp"):
        m.write_text('{"generated": "a.mp4", "reference": "a.mp4"}\n'
                     f'{{"generated": "{scheme}://127.0.0.1:9/x.mp4", "reference": "a.mp4"}}\n')
        with pytest.raises(pairs_mod.PairsError, match=rf"record 2, generated: {scheme}:// is not an allowed scheme"):
            next(pairs_mod.list_pairs(str(m), schemes=tuple(EvalConfig().input.schemes)))
    with pytest.raises(pairs_mod.PairsError, match="--generated: http:// is not an allowed"):
        list(pairs_mod.list_pairs("http://h/gen/", "/refs", schemes=("file",)))
    assert EvalConfig().input.schemes == ["file", "gs", "memory"] and EvalConfig().input.max_source_bytes == 16 * 2**30
    models = EvalModels(landmarks=None, lpips=None, syncnet=None)
    clip = str(DATA_DIR / "00015.mp4")
    with pytest.raises(clip_mod.PairReject) as e:
        clip_mod.evaluate_pair("http://127.0.0.1:9/x.mp4", clip, EvalConfig(), models)
    assert (e.value.reason, e.value.side, e.value.stage) == ("unsupported_scheme", "generated", "open")
    cfg = config_mod.load(EvalConfig, None, ["input.max_source_bytes=1000"])
    with pytest.raises(clip_mod.PairReject) as e:
        clip_mod.evaluate_pair(clip, clip, cfg, models)
    assert (e.value.reason, e.value.side) == ("too_large", "generated")


def test_hidden_files_are_skipped_and_a_single_file_is_named(tmp_path):
    """Folder listings used to include a killed dub's .tmp-<uuid>-x.mp4 and macOS's ._x.mp4 (scored
    or rejected as videos); a single generated file was said not to exist."""
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    _touch(gen, "a.mp4", ".tmp-0f3c-a.mp4", "._a.mp4", ".cache/b.mp4")
    _touch(ref, "a.mp4", "._a.mp4")
    for spec in (str(gen), str(gen / "*.mp4")):
        pairs = list(pairs_mod.list_pairs(spec, str(ref)))
        assert [(p["key"], p["generated"], p["reference"]) for p in pairs] == [
            ("a", str(gen / "a.mp4"), str(ref / "a.mp4"))]
    with pytest.raises(pairs_mod.PairsError, match=r"is a single file; expected a folder, a glob or a pairs manifest"):
        list(pairs_mod.list_pairs(str(gen / "a.mp4"), str(ref)))


def test_pairs_manifest_rules(tmp_path):
    m = tmp_path / "pairs.jsonl"
    m.write_text('{"generated": "g/x.mp4", "reference": "x.mp4", "dataset": "HDTF"}\n'
                 '{"generated": "g/x.mp4", "reference": "x.mp4", "dataset": "HDTF"}\n'
                 '{"generated": "gs://b/y.mp4", "reference": "/abs/y.mp4", "method": "W2L"}\n')
    pairs = list(pairs_mod.list_pairs(str(m), "gs://refs", dataset="D", method="M"))
    assert [(p["generated"], p["reference"], p["dataset"], p["method"], p["key"]) for p in pairs] == [
        (str(tmp_path / "g/x.mp4"), "gs://refs/x.mp4", "HDTF", "M", "g/x"),
        ("gs://b/y.mp4", "/abs/y.mp4", "D", "W2L", "y")]
    m.write_text('{"generated": "../../etc/passwd", "reference": "x.mp4"}\n')
    with pytest.raises(pairs_mod.PairsError, match=r"'\.\.'"):
        list(pairs_mod.list_pairs(str(m)))
    m.write_text('{"generated": "a.mp4"}\n')
    with pytest.raises(pairs_mod.PairsError, match="has no 'reference'"):
        list(pairs_mod.list_pairs(str(m)))


# ------------------------------------------------------------------------------- config, ids, CI
def test_config_and_run_id_validation():
    with pytest.raises(config_mod.ConfigError, match="protocol"):
        config_mod.load(EvalConfig, None, ["protocol=wav2lip"])
    with pytest.raises(config_mod.ConfigError, match="unknown key"):
        config_mod.load(EvalConfig, None, ["lpips.backbone=x"])
    with pytest.raises(config_mod.ConfigError, match="sync.track: unknown key"):
        config_mod.load(EvalConfig, None, ["sync.track={min_trak: 3}"])
    with pytest.raises(config_mod.ConfigError, match="crop_size"):
        config_mod.load(EvalConfig, None, ["crop_size=128"])
    assert config_mod.load(EvalConfig, None, ["protocol=dinet", "max_frames=5"]).protocol == "dinet"
    # Sync's S3FD file: sync.s3fd_uri, else the face_alignment backend's sfd_uri, else none (dlib fallback)
    fa = ["landmarks.backend=face_alignment", "landmarks.backend_args={sfd_uri: /w/s3fd.pth, sfd_sha256: abc}"]
    cfg = config_mod.load(EvalConfig, None, fa)
    assert cfg.sync.s3fd_weights(cfg.landmarks) == ("/w/s3fd.pth", "abc")
    cfg = config_mod.load(EvalConfig, None, fa + ["sync.s3fd_uri=/x.pth"])
    assert cfg.sync.s3fd_weights(cfg.landmarks) == ("/x.pth", None)
    assert EvalConfig().sync.s3fd_weights(EvalConfig().landmarks) == (None, None)
    with pytest.raises(config_mod.ConfigError, match="chunk_frames"):
        config_mod.load(EvalConfig, None, ["chunk_frames=0"])
    for bad in ("../x", "a/b", "", ".hidden", "x" * 200):
        with pytest.raises(results.RunIdError):
            results.run_dir("/out", bad)
    import datetime as dt
    when = dt.datetime(2025, 3, 4, 23, 59, tzinfo=dt.timezone.utc)
    rid = results.default_run_id("HDTF", "radio v2/ema", ("/d/dubA/videos", "/d/ref"), when)
    assert rid.startswith("2025-03-04_HDTF_radio-v2-ema_") and len(rid.rsplit("_", 1)[1]) == 6
    assert rid == results.default_run_id("HDTF", "radio v2/ema", ("/d/dubA/videos", "/d/ref"), when)
    assert rid != results.default_run_id("HDTF", "radio v2/ema", ("/d/dubB/videos", "/d/ref"), when)
    assert results.default_run_id("..", "", (), when).startswith("2025-03-04_x_x_")
    for name in ("HDTF", "a b", "ü/..", "-x-"):
        results.run_dir("/out", results.default_run_id(name, name, (name,), when))     # always a valid run id
    from pipelines.evaluate import job_name
    assert job_name("2025-03-04_Nightly.v2") == "radio-evaluate-2025-03-04-nightly-v2"


def test_report_refuses_a_pair_counted_twice(tmp_path, capsys, monkeypatch):
    """`python -m eval.report --output X RUN RUN` (or two runs holding the same pair) used to
    concatenate the rows and count each pair twice; now one line naming the pair and the runs, exit 2."""
    def run(name, pairs, rejected=(), complete=True, pair_id=lambda p: p):
        d = tmp_path / name
        rows = [{"run_id": name, "pair_id": pair_id(p), "key": p, "dataset": "D", "method": "M", "psnr": 30.0}
                for p in pairs]
        rejs = [{"run_id": name, "pair_id": pair_id(p), "key": p, "dataset": "D", "method": "M", "reason": "no_face",
                 "side": "reference", "stage": "faces", "message": "x"} for p in rejected]
        results.write_shard(str(d), "metrics", 0, rows, name)
        results.write_shard(str(d), "rejects", 0, rejs, name)
        if complete:
            (d / "summary.json").write_text("{}")
        return str(d)
    a, b, c = run("a", ["p1", "p2"]), run("b", ["p3"], rejected=["p2"]), run("c", ["p4"])
    # another generated folder of the same default method name: other pair ids, the same clips
    copy = run("copy", ["p1"], pair_id=lambda p: "other-" + p)
    killed = run("killed", ["p5"], complete=False)
    for argv, says in (([a, a], f"clip 'p1' of D / M is in {a!r}, given twice"),
                       ([a, b], f"clip 'p2' of D / M is in {a!r} and {b!r}"),
                       ([a, copy], f"clip 'p1' of D / M is in {a!r} and {copy!r}"),
                       ([a, killed], f"{killed!r} has no summary.json")):
        assert report.main(["--output", str(tmp_path / "out"), *argv]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
    monkeypatch.chdir(a)                      # a bare metrics.parquet: the run is the current folder
    assert report.main(["--output", str(tmp_path / "bare"), "metrics.parquet"]) == 0
    assert report.main(["--output", str(tmp_path / "out"), a, c]) == 0
    assert "4 pairs" not in (tmp_path / "out" / "summary.md").read_text()
    assert "3 pairs = 3 scored" in (tmp_path / "out" / "summary.md").read_text()


def test_mean_ci_is_the_t_interval():
    from scipy import stats

    v = [31.2, 29.8, 30.5, 33.1, None, float("nan"), 28.9]
    c = report.mean_ci(v)
    a = np.array([31.2, 29.8, 30.5, 33.1, 28.9])
    lo, hi = stats.t.interval(0.95, len(a) - 1, loc=a.mean(), scale=stats.sem(a))
    assert c["n"] == 5 and c["mean"] == pytest.approx(a.mean())
    assert (c["low"], c["high"]) == (pytest.approx(lo), pytest.approx(hi))
    one = report.mean_ci([2.0])
    assert one["n"] == 1 and math.isnan(one["half"])
    assert report.mean_ci([None])["n"] == 0


# ------------------------------------------------------------------------------- issue 13
def _s3fd_file(path: Path, face_logit: float = 10.0, side_full: float = 1024.0) -> str:
    """Seeded random S3FD (face_alignment's network) whose heads are pinned so that only the
    coarsest level (step 128) fires, everywhere with logit ``face_logit`` and boxes of
    ``side_full`` px (full frame) about its priors. On a 512² frame (128² scaled: a 2×2 map,
    priors at 64 and 192) boxes of 256 scaled px overlap their row/column neighbours by IoU 0.33
    (gone at NMS 0.3) and the diagonal one by 0.14 (gone at NMS 0.1): one box is left."""
    from face_alignment.detection.sfd.net_s3fd import s3fd

    torch.manual_seed(0)
    net = s3fd()
    state = net.state_dict()
    for k in state:
        if "mbox_conf" in k or "mbox_loc" in k:
            state[k] = torch.zeros_like(state[k])
    state["conv3_3_norm_mbox_conf.bias"][3] = -10.0
    for lvl in ("conv4_3_norm", "conv5_3_norm", "fc7", "conv6_2"):
        state[f"{lvl}_mbox_conf.bias"][1] = -10.0
    state["conv7_2_mbox_conf.bias"][1] = face_logit
    prior_scaled = 128 * 4.0
    state["conv7_2_mbox_loc.bias"][2:] = float(np.log(side_full * 0.25 / prior_scaled) / 0.2)
    torch.save(state, path)
    return str(path)


def test_s3fd_boxes_as_the_official_pipeline(tmp_path):
    from eval.metrics import s3fd

    f = _s3fd_file(tmp_path / "s3fd.pth")
    det = s3fd.S3FD(f, _sha(f))
    frame = np.zeros((512, 512, 3), np.uint8)
    boxes = det.detect(frame)
    assert boxes.shape == (1, 5) and boxes[0, 4] > 0.9
    # the first prior, (64, 64) of 128 scaled = the frame's centre, 256 scaled -> 1024 full px
    np.testing.assert_allclose(boxes[0, :4], [256 - 512, 256 - 512, 256 + 512, 256 + 512], atol=1e-3)
    weak_file = _s3fd_file(tmp_path / "weak.pth", face_logit=1.0)
    weak = s3fd.S3FD(weak_file, _sha(weak_file))
    assert weak.detect(frame).shape == (0, 5)  # p = sigmoid(1) ≈ 0.73 < conf 0.9
    assert "conf 0.9, scale 0.25" in det.describe()
    with pytest.raises(WeightsError, match="published prefix 619a316812"):
        s3fd.S3FD(f, None)  # no sha256 configured and not the published file


def test_sync_uses_s3fd_when_configured_and_says_so(tmp_path, weights):
    from eval.models import load_models

    f = _s3fd_file(tmp_path / "s3fd.pth")
    common = ["max_frames=40", "lpips.enabled=false", f"sync.weights_uri={weights['sync']}",
              f"sync.weights_sha256={weights['sync_sha']}", "sync.label=random (test)"]
    clip = str(DATA_DIR / "retalking_face5.mp4")
    cfg = config_mod.load(EvalConfig, None, common + [f"sync.s3fd_uri={f}", f"sync.s3fd_sha256={_sha(f)}",
                                                      "sync.track={min_track: 20}"])
    row, _ = clip_mod.evaluate_pair(clip, clip, cfg, load_models(cfg))
    assert row["sync_box_source"] == "s3fd" and row["sync_boxes"].startswith("s3fd every frame")
    assert row["sync_status"] == "scored" and row["sync_missing"] is False and 30 <= row["sync_n_windows"] <= 35
    # no S3FD file: the dlib fallback, labelled; 40 frames < min_track 100: too_short_for_sync
    cfg = config_mod.load(EvalConfig, None, common)
    row, _ = clip_mod.evaluate_pair(clip, clip, cfg, load_models(cfg))
    assert row["sync_box_source"] == "dlib_tracker" and "fallback, not S3FD" in row["sync_boxes"]
    assert row["sync_status"] == "too_short_for_sync" and row["sync_missing"] is True and row["sync_c"] is None
    assert "100" in row["sync_missing_reason"]
    s = results.summarise([{**row, "pair_id": "p", "key": "k", "dataset": "d", "method": "m"}], [], 1)
    assert s["too_short_for_sync"] == 1 and s["sync_status"] == {"too_short_for_sync": 1}
    assert "too_short_for_sync" in report.render_html([{**row, "pair_id": "p", "key": "k", "dataset": "d",
                                                        "method": "m"}], [], {**s, "run_id": "x"})


def test_streamed_pair_scores_equal_the_in_memory_path(weights, inputs):
    """Blocks of 7 frames against the whole pair in one block: the same rows and per-frame scores
    (an x264 crf-45 copy against its source; radio-v1 with LPIPS and Sync, then dinet)."""
    from eval.models import load_models

    gen, ref = str(inputs["root"] / "gen" / "00015_crf45.mp4"), str(DATA_DIR / "00015.mp4")
    base = ["max_frames=36", *_lpips_overrides(weights), f"sync.weights_uri={weights['sync']}",
            f"sync.weights_sha256={weights['sync_sha']}", "sync.track={min_track: 20}"]
    for overrides in (base, base + ["protocol=dinet", "lpips.enabled=false", "sync.enabled=false"]):
        cfgs = [config_mod.load(EvalConfig, None, overrides + [f"chunk_frames={c}"]) for c in (7, 10_000)]
        (r1, f1), (r2, f2) = [clip_mod.evaluate_pair(gen, ref, cfg, load_models(cfg)) for cfg in cfgs]
        skip = {"seconds", "timings"}
        assert {k: v for k, v in r1.items() if k not in skip} == {k: v for k, v in r2.items() if k not in skip}
        for k in ("frame_index", "psnr", "ms_ssim", "lmd"):
            np.testing.assert_array_equal(f1[k], f2[k])
        if f1["lpips"] is not None:
            np.testing.assert_allclose(f1["lpips"], f2["lpips"], rtol=1e-6, atol=1e-7)
        assert f1["sample_png"] == f2["sample_png"]
        assert 15 < r1["psnr"] < 40 and r1["lmd"] > 0
    assert r1["protocol"] == "dinet" and r1["protocol_version"] == 2 and (r1["crop_height"], r1["crop_width"]) == (416, 320)
    assert json.loads(r1["landmark_fitting"]) == {"backend": "dlib", "fit_boxes": 5, "fit_shift": 0.03, "upsample": 0}
    assert r1["landmark_fit_boxes"] == 5


def test_folders_unpaired_default_names_and_shards(tmp_path):
    """Two folders, one generated clip, three references: 1 scored + 2 unpaired (not rejects),
    dataset/method named after the folders, the tables written as shard folders, and shards an
    earlier run of the same id left behind removed."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    from pipelines import evaluate as job

    refs, gen = tmp_path / "hdtf_refs", tmp_path / "wav2lip_out"
    refs.mkdir(), gen.mkdir()
    for name in ("00015", "00086", "retalking_face5"):
        shutil.copyfile(DATA_DIR / f"{name}.mp4", refs / f"{name}.mp4")
    shutil.copyfile(DATA_DIR / "00086.mp4", gen / "00086.mp4")
    out = tmp_path / "out"
    stale = out / "runs" / "r" / "metrics.parquet" / "part-00042.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by an earlier run")
    summary = job.run(str(gen), str(out), reference=str(refs), run_id="r",
                      overrides=["max_frames=8", "lpips.enabled=false", "sync.enabled=false"],
                      test_pipeline=beam.Pipeline(runner=fn_runner.FnApiRunner()))
    assert (summary["inputs"], summary["scored"], summary["rejected"], summary["unpaired"]) == (3, 1, 0, 2)
    assert summary["counts_add_up"] and summary["rejects_by_reason"] == {}
    assert (summary["dataset"], summary["method"]) == ("hdtf_refs", "wav2lip_out")
    run = out / "runs" / "r"
    assert not stale.exists() and sorted(p.name for p in (run / "metrics.parquet").iterdir()) == ["part-00000.parquet"]
    rows = pq.read_table(run / "metrics.parquet").to_pylist()
    assert [(r["dataset"], r["method"], r["key"]) for r in rows] == [("hdtf_refs", "wav2lip_out", "00086")]
    assert pq.read_table(run / "rejects.parquet").num_rows == 0 and results.read_table(str(run / "frames.parquet"))
    md = (run / "summary.md").read_text()
    assert "3 pairs = 1 scored + 0 rejected + 2 unpaired (references without a generated clip)" in md
    assert "| wav2lip_out |" in md and "hdtf_refs PSNR↑" in md
    assert "2 unpaired" in job.format_summary(summary)
    json.loads((run / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))

    # default run ids: two generated folders of one name scored into one output the same day are two
    # runs (the date alone made the second replace the first)
    other = tmp_path / "other" / "wav2lip_out"
    shutil.copytree(gen, other)
    ids = []
    for g in (gen, other):
        s = job.run(str(g), str(out), reference=str(refs), overrides=["max_frames=2", "lpips.enabled=false",
                                                                      "sync.enabled=false"],
                    test_pipeline=beam.Pipeline(runner=fn_runner.FnApiRunner()))
        ids.append(s["run_id"])
    assert ids[0] != ids[1] and all((out / "runs" / i / "summary.json").exists() for i in ids)
    import re
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d_hdtf-refs_wav2lip-out_[0-9a-f]{6}", i) for i in ids), ids


def test_one_bad_pair_is_a_scoring_error_not_the_end_of_the_run(monkeypatch):
    """The per-pair boundary: an unexpected exception becomes a typed reject; an environment
    failure (OSError, MemoryError) propagates so the runner retries the pair."""
    from pipelines import evaluate as job

    fn = job.ScoreFn({}, "r")
    fn.cfg, fn.models = EvalConfig(), None
    pair = pairs_mod.make_pair("k", "g.mp4", "r.mp4", "d", "m")

    def boom(*a):
        raise ValueError("degenerate landmarks")
    monkeypatch.setattr(clip_mod, "evaluate_pair", boom)
    (out,) = list(fn.process(pair))
    assert out.tag == job.ScoreFn.REJECTS and out.value["reason"] == "scoring_error"
    assert out.value["message"] == "ValueError: degenerate landmarks" and out.value["key"] == "k"
    for env in (OSError(28, "No space left on device"), MemoryError()):
        def fail(*a, e=env):
            raise e
        monkeypatch.setattr(clip_mod, "evaluate_pair", fail)
        with pytest.raises(type(env)):
            list(fn.process(pair))


def test_summary_combiner_merges_to_the_exact_table():
    """eval.aggregate: any split of the rows merges to the counts and the Student-t cells of
    report.mean_ci on all the clip scores."""
    from eval import aggregate

    rng = np.random.default_rng(0)
    rows = [{"pair_id": f"p{i}", "key": f"k{i}", "dataset": "D", "method": "AB"[i % 2], "n_frames": 10,
             "psnr": float(rng.normal(30, 2)), "lmd": float(rng.normal(2, 0.3)), "sync_missing": i % 3 == 0,
             "sync_status": "too_short_for_sync" if i % 3 == 0 else "scored", "protocol": "radio-v1"}
            for i in range(50)]
    rejects = [{"pair_id": "x", "key": "x", "dataset": "D", "method": "A", "reason": "no_face"}]
    parts = [aggregate.new() for _ in range(3)]
    for i, r in enumerate(rows):
        aggregate.add(parts[i % 3], "scored", r)
    aggregate.add(parts[0], "rejected", rejects[0])
    out = aggregate.finish(aggregate.merge([aggregate.merge(parts[:2]), parts[2]]), 51)
    assert (out["scored"], out["rejected"], out["counts_add_up"]) == (50, 1, True)
    assert out["too_short_for_sync"] == 17 and out["rejects_by_reason"] == {"no_face": 1}
    cells = {(c["method"], c["metric"]): c for c in out["table"]}
    for m in "AB":
        want = report.mean_ci([r["psnr"] for r in rows if r["method"] == m])
        got = cells[(m, "psnr")]
        assert got["n"] == want["n"] == 25
        assert got["mean"] == pytest.approx(want["mean"], rel=1e-12) and got["half"] == pytest.approx(want["half"], rel=1e-9)
    assert len(out["_rows"]) == 50 and {g["method"]: g["sync_missing"] for g in out["groups"]} == {"A": 9, "B": 8}


def test_summary_sample_is_bounded_and_order_free(monkeypatch):
    from eval import aggregate

    monkeypatch.setattr(aggregate, "SAMPLE_ROWS", 7)
    rows = [{"pair_id": f"p{i}", "key": f"k{i}", "dataset": "D", "method": "M", "psnr": float(i)} for i in range(40)]
    picks = []
    for order in (rows, rows[::-1]):
        parts = [aggregate.new(), aggregate.new()]
        for i, r in enumerate(order):
            aggregate.add(parts[i % 2], "scored", r)
        out = aggregate.finish(aggregate.merge(parts), 40)
        picks.append([r["pair_id"] for r in out["_rows"]])
        assert out["table"][0]["n"] == 40  # the table is exact, only the sample is bounded
    assert len(picks[0]) == 7 and picks[0] == picks[1]


def test_report_says_too_short_for_sync():
    row = {"pair_id": "p", "key": "k", "dataset": "d", "method": "m", "psnr": 30.0, "n_frames": 40,
           "sync_missing": True, "sync_status": "too_short_for_sync"}
    s = results.summarise([row], [], 1)
    md = report.table_markdown([row], {**s, "run_id": "x"})
    assert "Scored without Sync: too_short_for_sync 1" in md
    assert "too_short_for_sync" in report.render_html([row], [], {**s, "run_id": "x"})


def test_workers_bound_their_heap():
    """load_models sets glibc's mmap threshold to 1 MiB (flat RSS on long pairs, bench/README.md)."""
    from eval import models

    assert models.bound_heap() is True and models.MMAP_THRESHOLD_BYTES == 1 << 20


def test_a_long_pair_moves_the_progress_bar_as_it_is_scored():
    """Evaluate reported a pair's frames only when the pair ended: a 25-minute pair sat at 0 frames
    ("starting workers") for its whole hour. Both passes now report, each counting half."""
    from eval.models import load_models
    from preprocess import progress

    cfg = config_mod.load(EvalConfig, None, ["max_frames=60", "lpips.enabled=false", "sync.enabled=false",
                                             "chunk_frames=16"])
    clip = str(DATA_DIR / "00015.mp4")
    got = []
    with progress.reporting(got.append):
        row, _ = clip_mod.evaluate_pair(clip, clip, cfg, load_models(cfg))
    assert sum(got) == row["n_frames"] == 60 and len(got) >= 6, got   # 4 chunks per pass


def test_a_generated_video_replaced_between_the_two_passes_is_an_input_changed_reject(tmp_path, monkeypatch):
    """Each pass opens the files again: a dub still writing (atomically replacing) the generated video
    made pass 1 track one file and pass 2 score another, mixed into one row without a trace."""
    from eval.models import load_models

    gen = tmp_path / "gen.mp4"
    shutil.copy(DATA_DIR / "00015.mp4", gen)
    other = tmp_path / "other.mp4"
    shutil.copy(DATA_DIR / "00015.mp4", other)
    cfg = config_mod.load(EvalConfig, None, ["max_frames=12", "lpips.enabled=false", "sync.enabled=false"])
    real, calls = clip_mod.iter_pair, []

    def second_pass_reads_a_new_file(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            os.replace(other, gen)                 # what an atomic rewrite of the output does
        return real(*args, **kw)

    monkeypatch.setattr(clip_mod, "iter_pair", second_pass_reads_a_new_file)
    with pytest.raises(clip_mod.PairReject) as e:
        clip_mod.evaluate_pair(str(gen), str(DATA_DIR / "00015.mp4"), cfg, load_models(cfg))
    assert e.value.reason == "input_changed" and e.value.side == "generated"
