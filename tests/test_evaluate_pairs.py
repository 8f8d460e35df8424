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


# ------------------------------------------------------------------------------- provenance
def test_rows_and_summary_say_which_files_were_scored(clips, models, tmp_path):
    """A metrics row named its files by URI only: a generated video dubbed again at the same path
    (or a reference replaced) gave rows that could not be told from the earlier run's. Each row now
    carries both files' fingerprints (size + change tag, as `radio dub` records its inputs) and
    summary.json an order-free digest of them over the scored pairs."""
    import json
    import os
    import shutil

    from eval import aggregate, clip as clip_mod, results

    gen = tmp_path / "gen.mp4"
    shutil.copyfile(clips["same"], gen)
    cfg = _cfg("max_frames=6")
    row1, _ = clip_mod.evaluate_pair(str(gen), clips["ref"], cfg, models)
    fp = json.loads(row1["generated_fingerprint"])
    assert fp["size"] == str(gen.stat().st_size) and fp["tag"]
    assert json.loads(row1["reference_fingerprint"])["size"] == str(os.path.getsize(clips["ref"]))
    row2, _ = clip_mod.evaluate_pair(str(gen), clips["ref"], cfg, models)
    assert row2["generated_fingerprint"] == row1["generated_fingerprint"]
    os.utime(gen, ns=(gen.stat().st_atime_ns, gen.stat().st_mtime_ns + 10**9))   # dubbed again, same bytes
    row3, _ = clip_mod.evaluate_pair(str(gen), clips["ref"], cfg, models)
    assert row3["generated_fingerprint"] != row1["generated_fingerprint"]
    assert row3["reference_fingerprint"] == row1["reference_fingerprint"]
    # in the table's rows (schema), and the run's digest: order-free, mergeable, another file another digest
    pair = {"pair_id": "p1", "key": "k", "dataset": "D", "method": "M", "generated": str(gen), "reference": clips["ref"]}
    rows = [results.metrics_row(pair, r, "run") for r in (row1, row3)]
    results.write_shard(str(tmp_path / "run"), "metrics", 0, rows[:1], "run")
    (back,) = results.read_table(str(tmp_path / "run" / "metrics.parquet"))
    assert back["generated_fingerprint"] == row1["generated_fingerprint"]
    other = {**rows[0], "pair_id": "p2"}
    d1 = results.summarise([rows[0], other], [], 2)["scored_files_digest"]
    assert d1 == results.summarise([other, rows[0]], [], 2)["scored_files_digest"]
    a, b = aggregate.new(), aggregate.new()
    aggregate.add(a, "scored", rows[0]), aggregate.add(b, "scored", other)
    assert aggregate.finish(aggregate.merge([a, b]), 2)["scored_files_digest"] == d1
    assert results.summarise([rows[1], other], [], 2)["scored_files_digest"] != d1
    assert results.summarise([], [], 0)["scored_files_digest"] is None


# ------------------------------------------------------------------------------- reports
def test_a_run_with_every_pair_rejected_says_so_in_summary_md():
    """A nightly run whose pairs were all rejected wrote summary.md with the table's header row over
    nothing ("| Method |" / "|---|"), which reads as a table that lost its rows."""
    from eval import report, results

    rejects = [{"pair_id": f"p{i}", "key": f"k{i}", "dataset": "HDTF", "method": "nightly", "reason": reason}
               for i, reason in enumerate(("length_mismatch", "missing_file"))]
    summary = {**results.summarise([], rejects, 3, [{"dataset": "HDTF", "method": "nightly"}]), "run_id": "r"}
    md = report.table_markdown([], summary)
    assert "3 pairs = 0 scored + 2 rejected (length_mismatch 1, missing_file 1) + 1 unpaired" in md
    assert "**No pair was scored** (2 rejected: reasons above and in rejects.parquet)" in md
    assert "| Method |" not in md and "| Dataset | Method |" not in md


# ------------------------------------------------------------------------------- scheduled runs
def test_the_crontab_line_runs_as_cron_does_and_logs_a_failure(tmp_path):
    """infra/schedule/crontab's command, run as cron runs it (/bin/sh, another directory, a bare
    environment) with the bucket a local folder: a failing night left only radio's one error line in
    the log (no time, no exit status) and a succeeding one filled it with progress-bar redraws."""
    import os
    import subprocess

    import sys

    repo = Path(__file__).resolve().parents[1]
    radio_bin = Path(sys.executable).parent / "radio"      # this install's: the crontab names <checkout>/.venv's
    assert radio_bin.exists(), radio_bin
    (line,) = [x for x in (repo / "infra" / "schedule" / "crontab").read_text().splitlines()
               if x.strip() and not x.startswith("#")]
    command = line.split(None, 5)[5]
    assert " .venv/bin/radio evaluate " in command
    command = command.replace(" .venv/bin/radio evaluate ", f" {radio_bin} evaluate ")
    assert "%" not in command   # cron turns '%' into a newline
    bucket, log = tmp_path / "bucket", tmp_path / "radio-eval.log"
    (bucket / "dubbed" / "latest").mkdir(parents=True)     # the dub wrote nothing tonight: a mistake, exit 2
    (bucket / "hdtf" / "test").mkdir(parents=True)
    (bucket / "configs").mkdir()
    (bucket / "configs" / "eval.yaml").write_text("lpips: {enabled: false}\nsync: {enabled: false}\n")
    command = (command.replace("/opt/radio", str(repo)).replace("gs://BUCKET", str(bucket))
               .replace("/var/log/radio-eval.log", str(log)))
    subprocess.run(["/bin/sh", "-c", command], cwd="/", env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                   check=True, timeout=120)
    text = log.read_text()
    assert "UTC" in text.splitlines()[0]                                       # when it ran
    assert "radio evaluate: error: --generated" in text and "lists no video files" in text
    assert text.rstrip().endswith("radio evaluate failed: exit 2")
    assert "\r" not in text and "--no-progress" in command
