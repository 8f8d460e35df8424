"""Evaluation results that must not be silently wrong or lost: run ids per scoring config,
non-finite scores, generated videos framed unlike their reference, frames shifted in time,
the unpaired count of ``python -m eval.report``, resize provenance.

Real media (tests/data) cut to a few frames; LPIPS and Sync off (they play no part here).
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from eval import results
from eval.config import EvalConfig, scoring_config, scoring_digest
from preprocess import config as config_mod

from conftest import DATA_DIR, ffmpeg

OFF = ["lpips.enabled=false", "sync.enabled=false"]


def _digest(*overrides) -> str:
    return scoring_digest(config_mod.to_dict(config_mod.load(EvalConfig, None, list(overrides))))


# ------------------------------------------------------------------------------- F4: run ids
def test_default_run_id_depends_on_the_scoring_config_only():
    """The default run id hashed the inputs only: the same inputs scored with --set protocol=dinet
    (or max_frames, a tolerance, landmark settings, other weights) the same day got the same id,
    and the second run deleted the first. Speed-only settings keep the id."""
    when = dt.datetime(2025, 3, 4, tzinfo=dt.timezone.utc)
    inputs = ("/d/dub/videos", "/d/ref")
    base = _digest(*OFF)

    def rid(digest):
        return results.default_run_id("HDTF", "radio", inputs, when, config_digest=digest)
    assert rid(base) == rid(_digest(*OFF)) and len(base) == 64          # stable
    same = ("chunk_frames=9", "device=cuda", "sample_frames=1", "sample_size=64", "lpips.batch_size=2",
            "lpips.label=x", "sync.label=y", "input.schemes=[file]", "lpips.backbone_uri=/elsewhere/alex.pth")
    for o in same:
        assert rid(_digest(*OFF, o)) == rid(base), o
    other = ("protocol=dinet", "max_frames=20", "crop_size=288", "length_tolerance=0", "aspect_tolerance=0.05",
             "min_face_coverage=0.9", "landmarks.backend_args={fit_boxes: 1}", "landmarks.tracker={redetect_every: 3}",
             "lpips.enabled=true", "sync.track={min_track: 20}", f"lpips.backbone_sha256={'0' * 64}",
             "sync.s3fd_uri=/w/s3fd.pth", "input.max_source_bytes=1000")
    ids = {rid(_digest(*OFF, o)) for o in other}
    assert len(ids) == len(other) and rid(base) not in ids
    # a weight URI without a sha256 names the file: it counts
    assert _digest(*OFF, "sync.s3fd_uri=/a.pth") != _digest(*OFF, "sync.s3fd_uri=/b.pth")
    cfg = scoring_config(config_mod.to_dict(EvalConfig()))
    assert "chunk_frames" not in cfg and "backbone_uri" not in cfg["lpips"] and cfg["protocol"] == "radio-v1"
    # without a digest (callers of the old signature): the inputs' hash as before
    assert results.default_run_id("HDTF", "radio", inputs, when).startswith("2025-03-04_HDTF_radio_")


def test_another_protocol_the_same_day_is_another_run(tmp_path):
    """End to end: the same folders scored with the default protocol and with dinet keep both
    runs; the default protocol again (another block size) replaces its own run only."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    from pipelines import evaluate as job

    gen = tmp_path / "gen"
    gen.mkdir()
    shutil.copyfile(DATA_DIR / "00086.mp4", gen / "00086.mp4")
    out = tmp_path / "out"
    ids = []
    for extra in ([], ["protocol=dinet"], ["chunk_frames=2"]):
        s = job.run(str(gen), str(out), reference=str(DATA_DIR), overrides=["max_frames=2", *OFF, *extra],
                    test_pipeline=beam.Pipeline(runner=fn_runner.FnApiRunner()))
        assert s["scored"] == 1 and s["config_digest"] == _digest("max_frames=2", *OFF, *extra)
        ids.append(s["run_id"])
    assert ids[0] != ids[1] and ids[2] == ids[0]
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(set(ids))
    assert all((out / "runs" / i / "summary.json").exists() for i in ids)
    assert json.loads((out / "runs" / ids[1] / "summary.json").read_text())["config"]["protocol"] == "dinet"


# ------------------------------------------------------------------------------- F1: non-finite
def _models():
    from eval.models import EvalModels
    from preprocess.landmarks import get_backend

    return EvalModels(landmarks=get_backend("dlib"), lpips=None, syncnet=None)


@pytest.fixture(scope="module")
def models():
    return _models()


def _cfg(*overrides):
    return config_mod.load(EvalConfig, None, [*OFF, *overrides])


def test_a_non_finite_clip_score_is_a_scoring_error_reject(monkeypatch, models):
    """A clip whose LMD came out inf was a scored row; the summary left it out of LMD's mean while
    saying "n clips scored" (a method with such a clip looked better). Now the pair is a
    scoring_error reject naming the metric and its frames."""
    from eval import clip as clip_mod
    from eval.metrics import lmd as lmd_mod

    real = lmd_mod.lmd_per_frame

    def one_inf(pred, gt):
        out = real(pred, gt)
        out[1] = np.inf
        return out
    monkeypatch.setattr(lmd_mod, "lmd_per_frame", one_inf)
    clip = str(DATA_DIR / "00086.mp4")
    with pytest.raises(clip_mod.PairReject) as e:
        clip_mod.evaluate_pair(clip, clip, _cfg("max_frames=4"), models)
    assert (e.value.reason, e.value.side, e.value.stage) == ("scoring_error", "pair", "score")
    assert "lmd inf, 1 of 4 frames non-finite" in e.value.message


def test_non_finite_rows_never_average_silently(tmp_path, capsys):
    """The combiner and the table refuse a non-finite clip score (a bug upstream, loud); eval.report
    counts an older run's such row as a scoring_error reject: inputs = scored + rejected."""
    from eval import aggregate, report

    good = {"pair_id": "a", "key": "a", "dataset": "D", "method": "M", "psnr": 30.0, "lmd": 2.0, "lpips": None}
    bad = {**good, "pair_id": "b", "key": "b", "lmd": float("inf")}
    assert aggregate.nonfinite(bad) == {"lmd": float("inf")} and aggregate.nonfinite(good) == {}
    with pytest.raises(ValueError, match="lmd"):
        aggregate.add(aggregate.new(), "scored", bad)
    with pytest.raises(ValueError, match="scoring_error"):
        report.summary_table([good, bad])
    run = tmp_path / "old"
    results.write_shard(str(run), "metrics", 0, [{**good, "run_id": "old"}, {**bad, "run_id": "old",
                                                                             "psnr": float("nan")}], "old")
    results.write_shard(str(run), "rejects", 0, [], "old")
    (run / "summary.json").write_text(json.dumps({"unpaired": 0}))
    assert report.main(["--output", str(tmp_path / "rep"), str(run)]) == 0
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "2 pairs = 1 scored + 1 rejected (scoring_error 1)" in md
    assert "| M | 30.00 | – | disabled | disabled | disabled | 2.000 |" in md
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "non-finite clip score: psnr nan; lmd inf" in html


# ------------------------------------------------------------------------------- F2: framing
def _cut(src: Path, dst: Path, vf: str | None = None, *extra) -> str:
    """The first 0.6 s of ``src`` through ``vf``, x264 (a re-encode either way)."""
    ffmpeg("-i", f"file:{src}", "-t", "0.6", *(["-vf", vf] if vf else []), "-c:v", "libx264", "-preset",
           "ultrafast", *extra, "-an", f"file:{dst}")
    return str(dst)


@pytest.fixture(scope="module")
def framings(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("framing")
    c15, lp, rt = DATA_DIR / "00015.mp4", DATA_DIR / "liveportrait_d12.mp4", DATA_DIR / "retalking_face5.mp4"
    return {
        # not the reference's framing: a face crop, a zoom, a shifted picture
        "crop": (_cut(lp, d / "crop.mp4", "crop=300:300:118:94,scale=192:192"), str(lp)),
        "zoom": (_cut(c15, d / "zoom.mp4", "crop=160:160:20:20"), str(c15)),
        "shift": (_cut(rt, d / "shift.mp4", "pad=iw+200:ih:200:0,crop=524:524:0:0"), str(rt)),
        # the reference's framing: re-encode, downscaled copy, another mouth (a dub's change)
        "crf": (_cut(rt, d / "crf.mp4", None, "-crf", "35"), str(rt)),
        "small": (_cut(rt, d / "small.mp4", "scale=262:262"), str(rt)),
        "mouth": (_cut(c15, d / "mouth.mp4", "delogo=x=64:y=108:w=48:h=40"), str(c15)),
        "mouth_lp": (_cut(lp, d / "mouth_lp.mp4", "delogo=x=225:y=275:w=92:h=42"), str(lp)),
    }


def test_a_face_crop_zoom_or_shift_is_a_content_mismatch(framings, models):
    """A 192x192 face crop scored against its 512x512 full-frame reference was accepted (same
    aspect ratio), upscaled and averaged in at PSNR ~15; so were a 1.4x zoom (PSNR 13.6) and a
    shifted picture. Now each is a content_mismatch reject saying what differs."""
    from eval import clip as clip_mod

    cfg = _cfg("max_frames=12", "length_tolerance=1000")
    says = {"crop": ("192x192 resized to the reference's 512x512", "x the reference's size"),
            "zoom": ("160x160 resized to the reference's 224x224",), "shift": ("face box IoU 0.",)}
    for name, want in says.items():
        with pytest.raises(clip_mod.PairReject) as e:
            clip_mod.evaluate_pair(*framings[name], cfg, models)
        assert (e.value.reason, e.value.side, e.value.stage) == ("content_mismatch", "generated", "faces"), name
        assert "generated face is not where the reference's is" in e.value.message
        assert all(w in e.value.message for w in want), e.value.message
        assert "face_check_frames=0" in e.value.message
    row, _ = clip_mod.evaluate_pair(*framings["zoom"], _cfg("max_frames=4", "length_tolerance=1000",
                                                             "face_check_frames=0"), models)
    assert row["psnr"] < 20 and row["face_box_iou"] is None and row["face_check_frames"] == 0  # asked for: scored


def test_the_reference_framing_passes_the_check(framings, models):
    """Re-encodes, a downscaled copy and a changed mouth (what a dub changes) keep the framing:
    scored, the check's numbers in the row."""
    from eval import clip as clip_mod

    cfg = _cfg("max_frames=12", "length_tolerance=1000")
    for name in ("crf", "small", "mouth", "mouth_lp"):
        row, _ = clip_mod.evaluate_pair(*framings[name], cfg, models)
        assert row["face_check_frames"] == 5 and row["face_box_iou"] > 0.9, (name, row["face_box_iou"])
        assert abs(row["face_scale_ratio"] - 1) < 0.03, (name, row["face_scale_ratio"])
        assert row["psnr"] > 25, name
        assert (row["best_offset"], row["offset_gain_db"], row["frame_offset_flagged"]) == (0, 0.0, False), name
    clip = str(DATA_DIR / "00086.mp4")
    row, _ = clip_mod.evaluate_pair(clip, clip, cfg, models)
    assert (row["face_box_iou"], row["face_scale_ratio"]) == (1.0, 1.0)


# ------------------------------------------------------------------------------- F3: time offset
@pytest.fixture(scope="module")
def shifted(tmp_path_factory) -> dict:
    d, c15 = tmp_path_factory.mktemp("shifted"), DATA_DIR / "00015.mp4"
    return {"late": _cut(c15, d / "late.mp4", "trim=start_frame=1,setpts=PTS-STARTPTS"),   # first frame lost
            "early": _cut(c15, d / "early.mp4", "tpad=start=1:start_mode=clone"),           # one frame added
            "ref": str(c15)}


def test_a_generated_video_shifted_in_time_is_a_frame_offset_reject(shifted, models):
    """Frames are paired from frame 0: a generated video missing its first frame was scored frame i
    against i (here PSNR ~32 instead of ~40, in the attack's clip 28 instead of 50), silently. The
    offset is measured on 8 frames of the crop (generated t-2..t+2 against reference t): a shift
    that beats the pairing by > 3 dB is a frame_offset reject by default."""
    from eval import clip as clip_mod

    cfg = _cfg("max_frames=14", "length_tolerance=1000")
    for name, k in (("late", -1), ("early", 1)):
        with pytest.raises(clip_mod.PairReject) as e:
            clip_mod.evaluate_pair(shifted[name], shifted["ref"], cfg, models)
        assert (e.value.reason, e.value.side, e.value.stage) == ("frame_offset", "generated", "score")
        assert f"generated frame t{k:+d} matches reference frame t best" in e.value.message, e.value.message
        assert "mean of 8 frames of the crop" in e.value.message and "frame_offset=record" in e.value.message
    # record: scored as paired, flagged in the row and counted in the reports
    row, _ = clip_mod.evaluate_pair(shifted["late"], shifted["ref"], _cfg("max_frames=14", "length_tolerance=1000",
                                                                           "frame_offset=record"), models)
    assert row["best_offset"] == -1 and row["offset_gain_db"] > 3 and row["frame_offset_flagged"] is True
    from eval import report

    row = {**row, "pair_id": "p", "key": "k", "dataset": "d", "method": "m"}
    s = results.summarise([row], [], 1)
    assert s["frame_offset_flagged"] == 1
    assert "Scored as paired although shifted in time: 1 clip" in report.table_markdown([row], {**s, "run_id": "x"})
    assert "shifted in time" in report.render_html([row], [], {**s, "run_id": "x"})
    with pytest.raises(config_mod.ConfigError, match="frame_offset"):
        _cfg("frame_offset=warn")


# ------------------------------------------------------------------------------- F5: eval.report
def _run(root: Path, name: str, method: str, keys, unpaired: int) -> str:
    d = root / name
    rows = [{"run_id": name, "pair_id": f"{name}-{k}", "key": k, "dataset": "D", "method": method, "psnr": 30.0 + i,
             "lmd": 1.0, "sync_missing": None} for i, k in enumerate(keys)]
    results.write_shard(str(d), "metrics", 0, rows, name)
    results.write_shard(str(d), "rejects", 0, [], name)
    groups = [{"dataset": "D", "method": method, "scored": len(keys), "rejected": 0, "unpaired": unpaired}]
    (d / "summary.json").write_text(json.dumps({"run_id": name, "dataset": "D", "method": method, "groups": groups,
                                                "inputs": len(keys) + unpaired, "unpaired": unpaired}))
    return str(d)


def test_report_over_runs_keeps_their_unpaired_counts(tmp_path, capsys):
    """python -m eval.report over runs said "3 pairs = 3 scored + 0 rejected" for runs that had
    references without a generated clip: it passed rows + rejects as the inputs. Now each run's
    summary.json gives its unpaired count (per method), and the counts add up."""
    from eval import report

    a = _run(tmp_path, "a", "A", ["k1", "k2"], unpaired=2)
    b = _run(tmp_path, "b", "B", ["k1"], unpaired=3)
    assert report.main(["--output", str(tmp_path / "rep"), a, b]) == 0
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "8 pairs = 3 scored + 0 rejected + 5 unpaired (references without a generated clip)." in md
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "<tr><td class=l>unpaired (references without a generated clip)</td><td>5</td></tr>" in html
    assert "<td class=ok>yes</td>" in html  # scored + rejected + unpaired = listed
    # a run with no rows given twice would count its unpaired twice: refused
    empty = _run(tmp_path, "e", "E", [], unpaired=4)
    capsys.readouterr()
    assert report.main(["--output", str(tmp_path / "rep2"), empty, empty + "/"]) == 2
    assert "is given twice" in capsys.readouterr().err


def test_report_reads_runs_written_before_the_new_columns(tmp_path):
    """A radio-eval/2 run (no face_*, offset or resize columns) still makes a report."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from eval import report

    run = tmp_path / "old"
    (run / "metrics.parquet").mkdir(parents=True)
    old = [f for f in results.METRICS_SCHEMA if not f.name.startswith(("face_", "best_offset", "offset_",
                                                                     "frame_offset", "resize_", "generated_h",
                                                                     "generated_w"))]
    assert len(old) < len(results.METRICS_SCHEMA)
    row = {"run_id": "old", "pair_id": "p", "key": "k", "dataset": "D", "method": "M", "psnr": 31.0, "ms_ssim": 0.9,
           "lmd": 2.0, "n_frames": 10, "generated_resized": True, "protocol": "radio-v1"}
    pq.write_table(pa.Table.from_pylist([row], schema=pa.schema(old)), run / "metrics.parquet" / "part-00000.parquet")
    results.write_shard(str(run), "rejects", 0, [], "old")
    (run / "summary.json").write_text(json.dumps({"schema_version": "radio-eval/2", "unpaired": 1, "dataset": "D",
                                                  "method": "M"}))
    assert report.main(["--output", str(tmp_path / "rep"), str(run)]) == 0
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "2 pairs = 1 scored + 0 rejected + 1 unpaired" in md and "| M | 31.00 |" in md


# ------------------------------------------------------------------------------- F6: resize
def test_resized_rows_say_how(framings, tmp_path, models):
    """A smaller generated video is enlarged bilinearly, a larger one area-averaged; the rows said
    only generated_resized. Now they record the interpolation and the generated size."""
    from eval import clip as clip_mod
    from eval import report

    cfg = _cfg("max_frames=6", "length_tolerance=1000")
    small, ref = framings["small"]
    row, _ = clip_mod.evaluate_pair(small, ref, cfg, models)
    assert (row["generated_resized"], row["resize_interpolation"]) == (True, "cv2.INTER_LINEAR")
    assert (row["generated_height"], row["generated_width"], row["frame_height"]) == (262, 262, 524)
    large = _cut(DATA_DIR / "00015.mp4", tmp_path / "large.mp4", "scale=448:448")
    row2, _ = clip_mod.evaluate_pair(large, str(DATA_DIR / "00015.mp4"), cfg, models)
    assert row2["resize_interpolation"] == "cv2.INTER_AREA" and row2["generated_width"] == 448
    row3, _ = clip_mod.evaluate_pair(ref, ref, cfg, models)
    assert row3["resize_interpolation"] is None and row3["generated_resized"] is False
    rows = [{**r, "pair_id": k, "key": k, "dataset": "d", "method": "m"} for k, r in (("a", row), ("b", row2))]
    md = report.table_markdown(rows, {**results.summarise(rows, [], 2), "run_id": "x"})
    assert "bilinear (cv2.INTER_LINEAR) when smaller, area averaging (cv2.INTER_AREA) when larger" in md


def test_a_shard_removed_while_the_run_ran_fails_it_instead_of_a_summary_over_empty_tables(tmp_path):
    """A second run of the same id (now refused by the output lock; on gs:// the lock is best effort)
    emptied the tables of a live run, which then wrote summary.json saying '2 scored', exit 0."""
    run = tmp_path / "runs" / "r"
    written = [results.write_shard(str(run), "metrics", 0, [], "r"), results.write_shard(str(run), "rejects", 0, [], "r")]
    Path(written[0]).unlink()
    with pytest.raises(results.RunFilesLost, match="removed while it ran"):
        results.finish_tables(str(run), written, "r")
    assert results.finish_tables(str(run), written[1:], "r")["rejects"].endswith("rejects.parquet")
