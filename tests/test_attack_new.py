"""Attacks on today's features that found a fault, one test each (fails on the code before its fix).

Clip ranges: a manifest line whose range changed, a whole-file line split into ranges (or back),
made a new source id beside the earlier run's; the earlier source's rows stayed in ``rows/`` and
training read those frames twice (with another ``split``: eval frames in train).
"""
from __future__ import annotations

import os
from collections import Counter

from conftest import CLIP, write_csv
from pipelines import preprocess as pipeline
from preprocess import shards

ONE_WORKER = ["--direct_num_workers=1"]


def frames_held(ds: str) -> Counter:
    """How many rows of the dataset hold each frame of the video."""
    held: Counter = Counter()
    for s in shards.list_shards(ds):
        for r in shards.read_shard(s, ["start_frame", "n_frames"]).to_pylist():
            held.update(range(r["start_frame"], r["start_frame"] + r["n_frames"]))
    return held


def unmarked(ds: str) -> list[str]:
    """Sources with rows and no done marker."""
    return sorted(set(shards.row_source_ids(ds)) - shards.done_source_ids(ds))


def test_a_changed_range_replaces_the_earlier_runs_source(tmp_path):
    ds = str(tmp_path / "ds")
    a = write_csv(tmp_path / "a.csv", [[str(CLIP), "0", "3"], [str(CLIP), "3", ""]])
    assert pipeline.run(str(a), ds, ONE_WORKER, run_id="r1")["sources_with_rows"] == 2
    assert max(frames_held(ds).values()) == 1
    # the first range shortened, its video spelled file://: frames 0..49 must be in one row only
    b = write_csv(tmp_path / "b.csv", [[f"file://{CLIP}", "0", "2"], [str(CLIP), "3", ""]])
    s = pipeline.run(str(b), ds, ONE_WORKER, run_id="r2", resume=True)
    assert (s["skipped_resume"], s["processed"], s["replaced_earlier"]) == (1, 1, 1), s
    held = frames_held(ds)
    assert max(held.values()) == 1 and not any(50 <= f < 75 for f in held), sorted(held)
    assert len(shards.done_source_ids(ds)) == len(shards.list_shards(ds)) == 2
    # the whole video listed again: both ranges go; and split into ranges again: the whole one goes
    w = write_csv(tmp_path / "w.csv", [[str(CLIP)]], header=("uri",))
    assert pipeline.run(str(w), ds, ONE_WORKER, run_id="r3", resume=True)["replaced_earlier"] == 2
    assert max(frames_held(ds).values()) == 1 and len(shards.done_source_ids(ds)) == 1
    s = pipeline.run(str(a), ds, ONE_WORKER, run_id="r4", resume=True)
    assert s["replaced_earlier"] == 1 and max(frames_held(ds).values()) == 1, s
    assert len(shards.done_source_ids(ds)) == len(shards.list_shards(ds)) == 2
    # a disjoint range of the same video listed alone keeps the others (a dataset is the union of inputs)
    c = write_csv(tmp_path / "c.csv", [[str(CLIP), "100", "200"]])
    assert pipeline.run(str(c), ds, ONE_WORKER, run_id="r5", resume=True)["replaced_earlier"] == 0
    assert len(shards.done_source_ids(ds)) == 3


def test_rows_left_without_a_done_marker_are_replaced_too(tmp_path):
    """A worker killed between a source's rows and its done marker, then the range changed: the
    earlier source was known only by its marker, so its rows stayed beside the new source's and
    training read frames 0..49 twice."""
    ds = str(tmp_path / "ds")
    a = write_csv(tmp_path / "a.csv", [[str(CLIP), "0", "3"]])
    assert pipeline.run(str(a), ds, ONE_WORKER, run_id="r1")["sources_with_rows"] == 1
    (first,) = shards.done_source_ids(ds)
    os.remove(shards.done_uri(ds, first))                      # killed between the two writes
    assert unmarked(ds) == [first]
    b = write_csv(tmp_path / "b.csv", [[str(CLIP), "0", "2"]])
    s = pipeline.run(str(b), ds, ONE_WORKER, run_id="r2", resume=True)
    assert (s["processed"], s["replaced_earlier"]) == (1, 1), s
    held = frames_held(ds)
    assert max(held.values()) == 1 and not any(50 <= f < 75 for f in held), sorted(held)
    assert unmarked(ds) == [] and len(shards.list_shards(ds)) == 1
    # unmarked rows of frames no listed source holds stay (another input's source, redone by its run)
    (second,) = shards.done_source_ids(ds)
    os.remove(shards.done_uri(ds, second))
    c = write_csv(tmp_path / "c.csv", [[str(CLIP), "5", "6"]])
    s = pipeline.run(str(c), ds, ONE_WORKER, run_id="r3", resume=True)
    assert (s["sources_with_rows"], s["replaced_earlier"]) == (1, 0), s
    assert unmarked(ds) == [second] and len(shards.list_shards(ds)) == 2
    # listed again, the unmarked source is simply redone under its own name
    s = pipeline.run(str(b), ds, ONE_WORKER, run_id="r4", resume=True)
    assert (s["processed"], s["skipped_resume"], s["replaced_earlier"]) == (1, 0, 0), s
    assert unmarked(ds) == [] and max(frames_held(ds).values()) == 1


def test_a_rejected_whole_file_leaves_its_ranges_rows(tmp_path):
    """A 7 s video over ``limits.max_duration_s`` listed as ranges, then whole (a glob over the
    folder to add new videos): the whole file is a reject ``too_long``; the ranges' rows stay."""
    ds, short = str(tmp_path / "ds"), ["limits.max_duration_s=5"]
    a = write_csv(tmp_path / "a.csv", [[str(CLIP), "0", "3"], [str(CLIP), "3", ""]])
    assert pipeline.run(str(a), ds, ONE_WORKER, overrides=short, run_id="r1")["sources_with_rows"] == 2
    w = write_csv(tmp_path / "w.csv", [[str(CLIP)]], header=("uri",))
    s = pipeline.run(str(w), ds, ONE_WORKER, overrides=short, run_id="r2", resume=True)
    assert s["rejects_by_reason"] == {"too_long": 1} and s["replaced_earlier"] == 0, s
    assert len(shards.list_shards(ds)) == 2 and max(frames_held(ds).values()) == 1
    # and a later run that lists the ranges again finds them finished, removing nothing
    s = pipeline.run(str(a), ds, ONE_WORKER, overrides=short, run_id="r3", resume=True)
    assert (s["skipped_resume"], s["replaced_earlier"]) == (2, 0), s


def test_a_gcs_endpoint_in_fsspecs_config_is_no_cannot_reach(monkeypatch):
    """``FSSPEC_GCS_ENDPOINT_URL`` (or an fsspec config file) points gcsfs at another endpoint (a
    private one, an emulator): storage.googleapis.com not resolving says nothing about reaching it.
    It was 'cannot reach gs://...: storage.googleapis.com does not resolve', exit 1."""
    import socket

    import fsspec.config

    from preprocess.failures import EnvironmentFailure
    from preprocess.uri import check_network

    def no_dns(host, *a, **k):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr("time.sleep", lambda s: None)
    for k in ("STORAGE_EMULATOR_HOST", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(fsspec.config, "conf", {})
    try:
        check_network(["gs://some-bucket/ds"])
        raise AssertionError("no network and no endpoint configured: expected EnvironmentFailure")
    except EnvironmentFailure:
        pass
    monkeypatch.setattr(fsspec.config, "conf", {"gcs": {"endpoint_url": "http://127.0.0.1:4443"}})
    check_network(["gs://some-bucket/ds"])


def test_tensorboard_upload_from_a_tmpdir_named_with_brackets(tmp_path, monkeypatch):
    """A remote run's TensorBoard files are written under $TMPDIR and uploaded by ``Board.sync``;
    fs.put expanded ``[ ] * ?`` in the local name (TMPDIR=/scratch/job[1]): FileNotFoundError at
    the first sync, the run ended."""
    import tempfile

    import fsspec

    from radio.train.logger import Board

    tmp = tmp_path / "job[1]"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    board = Board("memory://attack-new-bucket/run")
    try:
        assert board.local.startswith(str(tmp))
        board.scalars({"x": 1.0}, 1)
        board.sync()
        fs = fsspec.filesystem("memory")
        assert any("tfevents" in p for p in fs.find("/attack-new-bucket/run/tb"))
    finally:
        board.close()
        fsspec.filesystem("memory").rm("/attack-new-bucket", recursive=True)
