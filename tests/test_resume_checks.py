"""`--resume` trusts nothing it has not checked (issue 9, item 5).

Done markers record each output file's size, sha256 and row count; `--resume` checks size and
Parquet footer and redoes a source whose files are missing or damaged. The dataset records the
fingerprint of its output-affecting config: a run with another one is refused in one line naming
the changed keys, unless `--new-version`.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import DATA_DIR, ffmpeg, make_testsrc
from pipelines import preprocess as pipeline
from preprocess import shards

ONE_WORKER = ["--direct_num_workers=1"]
IN_PROCESS = ["worker.isolate=false"]  # these runs need no child process: faster


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A 2 s clip with a face and a faceless one, through one run -> (inputs folder, dataset)."""
    d = tmp_path_factory.mktemp("in")
    ffmpeg("-i", f"file:{DATA_DIR / '00015.mp4'}", "-t", 2, "-c", "copy", f"file:{d / 'face.mp4'}")
    make_testsrc(d / "noface.mp4", seconds=2, size="320x240", audio=True)
    ds = tmp_path_factory.mktemp("ds") / "dataset"
    summary = pipeline.run(str(d), str(ds), ONE_WORKER, overrides=IN_PROCESS, run_id="first")
    assert (summary["sources_with_rows"], summary["sources_rejected"]) == (1, 1)
    return d, ds


def copy_of(made, tmp_path) -> str:
    shutil.copytree(made[1], tmp_path / "ds")
    return str(tmp_path / "ds")


def markers(ds: str) -> dict[str, dict]:
    return {sid: json.loads(Path(shards.done_uri(ds, sid)).read_text()) for sid in shards.done_source_ids(ds)}


def test_done_marker_records_size_and_sha256_of_each_file(made):
    _, ds = made
    info = json.loads((ds / shards.DATASET_INFO).read_text())
    for sid, m in markers(str(ds)).items():
        assert m["config_fingerprint"] == info["fingerprint"]
        kind = shards.ROWS if m["status"] == "rows" else shards.REJECTS
        (rec,) = m["files"]
        data = (ds / rec["path"]).read_bytes()
        assert rec["path"] == f"{kind}/{sid}.parquet" and rec["size"] == len(data)
        assert rec["sha256"] == hashlib.sha256(data).hexdigest()
        assert rec["rows"] == (m["segments"] if kind == shards.ROWS else len(m["reject_reasons"]))


@pytest.mark.parametrize("damage", ["cut_in_half", "footer_overwritten", "missing", "marker_unreadable"])
def test_resume_redoes_sources_whose_files_are_damaged(made, tmp_path, damage):
    inputs, _ = made
    ds = copy_of(made, tmp_path)
    (rows,) = Path(ds, shards.ROWS).glob("*.parquet")
    good = rows.read_bytes()
    if damage == "cut_in_half":
        rows.write_bytes(good[: len(good) // 2])
    elif damage == "footer_overwritten":  # same size, no footer
        rows.write_bytes(good[:-16] + b"\0" * 16)
    elif damage == "missing":
        rows.unlink()
    else:
        Path(shards.done_uri(ds, rows.stem)).write_bytes(b"{not json")
    assert shards.check_done(ds, {"status": "rows", "files": [], "config_fingerprint": "x"}, "y")
    summary = pipeline.run(str(inputs), ds, ONE_WORKER, overrides=IN_PROCESS, resume=True, run_id="resume")
    assert (summary["redone_after_check"], summary["processed"], summary["skipped_resume"]) == (1, 1, 1)
    assert summary["sources_with_rows"] == 1 and summary["counts_add_up"]
    assert rows.read_bytes() == good  # redone: the same bytes as the first run
    # and now it checks out: the next resume skips both
    summary = pipeline.run(str(inputs), ds, ONE_WORKER, overrides=IN_PROCESS, resume=True, run_id="again")
    assert (summary["redone_after_check"], summary["skipped_resume"]) == (0, 2)


def test_resume_redoes_a_source_whose_manifest_labels_changed(made, tmp_path):
    """A clip moved from train to eval in the manifest used to be 'finished earlier' with rows that
    still said train (and trained on); the marker records the labels, and a change redoes it."""
    import pyarrow.parquet as pq

    inputs, _ = made
    ds = str(tmp_path / "labelled")
    man = tmp_path / "m.csv"

    def run(split, run_id):
        man.write_text(f"uri,speaker_id,split\n{inputs / 'face.mp4'},s1,{split}\n{inputs / 'noface.mp4'},s2,{split}\n")
        return pipeline.run(str(man), ds, ONE_WORKER, overrides=IN_PROCESS, resume=True, run_id=run_id)

    run("train", "first")
    assert {m["labels"]["split"] for m in markers(ds).values()} == {"train"}
    s = run("eval", "moved")
    assert (s["redone_after_check"], s["skipped_resume"]) == (1, 1)         # the rejected one has no rows
    (rows,) = Path(ds, shards.ROWS).glob("*.parquet")
    assert set(pq.read_table(rows, columns=["split"]).column("split").to_pylist()) == {"eval"}
    s = run("eval", "same")
    assert (s["redone_after_check"], s["skipped_resume"]) == (0, 2)
    # a glob (or a manifest without the columns) gives no labels: it changes none. Before, every source was
    # redone and its rows lost speaker and split (the dataset's eval clips then trained as train)
    s = pipeline.run(str(inputs / "*.mp4"), ds, ONE_WORKER, overrides=IN_PROCESS, resume=True, run_id="glob")
    assert (s["redone_after_check"], s["skipped_resume"]) == (0, 2)
    assert set(pq.read_table(rows, columns=["split"]).column("split").to_pylist()) == {"eval"}
    # nor without --resume: every source is redone, with the labels its marker recorded
    s = pipeline.run(str(inputs / "*.mp4"), ds, ONE_WORKER, overrides=IN_PROCESS, run_id="glob-again")
    assert (s["processed"], s["sources_with_rows"]) == (2, 1)
    assert set(pq.read_table(rows, columns=["split"]).column("split").to_pylist()) == {"eval"}
    assert {m["labels"]["speaker_id"] for m in markers(ds).values()} == {"s1", "s2"}


def test_resume_redoes_a_source_whose_file_was_replaced_under_its_name(made, tmp_path):
    """A corpus file re-downloaded or fixed under the same name: `--resume` kept the old file's rows
    (its marker recorded what was written, not what was read). Markers record the input's size and
    change tag (mtime / generation / etag); a changed one is redone and its rows replaced."""
    import os

    import pyarrow.parquet as pq

    inputs, _ = made
    corpus = tmp_path / "corpus"
    shutil.copytree(inputs, corpus)
    ds = str(tmp_path / "ds")
    pipeline.run(str(corpus), ds, ONE_WORKER, overrides=IN_PROCESS, run_id="first")
    assert all(m["input"]["size"] == str((corpus / "face.mp4").stat().st_size)
               for m in markers(ds).values() if m["status"] == "rows")
    (rows,) = Path(ds, shards.ROWS).glob("*.parquet")
    before = pq.read_table(rows, columns=["n_frames"]).column("n_frames").to_pylist()
    # the same name, another (longer) cut of the clip
    ffmpeg("-i", f"file:{DATA_DIR / '00015.mp4'}", "-t", 3, "-c", "copy", f"file:{tmp_path / 'new.mp4'}")
    os.replace(tmp_path / "new.mp4", corpus / "face.mp4")
    s = pipeline.run(str(corpus), ds, ONE_WORKER, overrides=IN_PROCESS, resume=True, run_id="replaced")
    assert (s["redone_after_check"], s["skipped_resume"], s["processed"]) == (1, 1, 1) and s["counts_add_up"]
    after = pq.read_table(rows, columns=["n_frames"]).column("n_frames").to_pylist()
    assert sum(after) > sum(before), (before, after)
    s = pipeline.run(str(corpus), ds, ONE_WORKER, overrides=IN_PROCESS, resume=True, run_id="again")
    assert (s["redone_after_check"], s["skipped_resume"]) == (0, 2)
    # a marker from before fingerprints (no "input") stands, and so does one whose file is gone
    for sid, m in markers(ds).items():
        Path(shards.done_uri(ds, sid)).write_text(json.dumps({k: v for k, v in m.items() if k != "input"}))
    os.utime(corpus / "face.mp4", (1, 1))
    s = pipeline.run(str(corpus), ds, ONE_WORKER, overrides=IN_PROCESS, resume=True, run_id="old-markers")
    assert (s["redone_after_check"], s["skipped_resume"]) == (0, 2)


def test_other_config_is_refused_in_one_line_unless_new_version(made, tmp_path, capsys):
    from radio import cli

    inputs, _ = made
    ds = copy_of(made, tmp_path)
    before = markers(ds)
    argv = ["preprocess", "--input", str(inputs), "--output", ds, "--no-progress", *ONE_WORKER,
            "--set", IN_PROCESS[0], "--resume", "--set", "align.crop_size=128"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "align.crop_size (192 -> 128)" in err and "--new-version" in err, err
    assert markers(ds) == before and not Path(ds, "runs", "resume").exists()  # refused before any work
    # settings that change how a run works, not what it writes, are no new version
    summary = pipeline.run(str(inputs), ds, ONE_WORKER, overrides=[*IN_PROCESS, "decode.chunk=16",
                                                                   "worker.attempts=5"], resume=True)
    assert summary["skipped_resume"] == 2

    assert cli.main([*argv, "--new-version", "--run-id", "v2"]) == 0
    summary = json.loads(Path(ds, "summary.json").read_text())
    assert (summary["processed"], summary["skipped_resume"]) == (2, 0)  # the old version's markers don't count
    assert summary["config"]["align"]["crop_size"] == 128
    info = json.loads(Path(ds, shards.DATASET_INFO).read_text())
    assert info["version"] == 2 and info["config"]["align.crop_size"] == 128
    rows = [r for s in shards.list_shards(ds) for r in shards.read_shard(s).to_pylist()]
    from preprocess import schema

    assert rows and all(schema.decode_segment(r)["frames"].shape[1:3] == (128, 128) for r in rows)
    # the new version resumes with its own config, and the old one is refused now
    summary = pipeline.run(str(inputs), ds, ONE_WORKER, overrides=[*IN_PROCESS, "align.crop_size=128"], resume=True)
    assert summary["skipped_resume"] == 2
    with pytest.raises(shards.DatasetConfigError, match=r"align.crop_size \(128 -> 192\)"):
        pipeline.run(str(inputs), ds, ONE_WORKER, overrides=IN_PROCESS, resume=True)
