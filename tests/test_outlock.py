"""One run at a time per output (preprocess.outlock): a second run on an output another live run
is writing is refused in one line, before its start-up clean-up can delete the live run's files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import fsspec
import pytest

from conftest import CLIP
from preprocess import outlock
from test_cli import run_cli

HOLDER = """
import sys, time
from preprocess import outlock
with outlock.hold(sys.argv[1], "dub"):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(output) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(output)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_holder_is_refused_naming_the_first_and_a_killed_holder_frees_it(tmp_path):
    p = _holder(tmp_path / "out")
    try:
        with pytest.raises(outlock.OutputBusy, match=rf"radio dub \(pid {p.pid} on .*\) is writing"):
            with outlock.hold(str(tmp_path / "out"), "preprocess"):
                pass
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with outlock.hold(str(tmp_path / "out"), "preprocess"):   # the kernel released a SIGKILLed holder's lock
        owner = json.loads((tmp_path / "out" / outlock.LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid() and owner["command"] == "preprocess"


def test_a_mistake_found_while_holding_leaves_the_output_as_it_was(tmp_path):
    from preprocess.errors import UserError

    with pytest.raises(UserError):
        with outlock.hold(str(tmp_path / "new"), "compact"):
            raise UserError("bad")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    with pytest.raises(UserError):
        with outlock.hold(str(tmp_path / "old"), "compact"):
            raise UserError("bad")
    assert list((tmp_path / "old").iterdir()) == []


def test_remote_lock_heartbeat_refuses_a_live_holder_and_takes_over_a_stale_one(monkeypatch):
    out = "memory://radio-test-lock/ds"
    lock = f"{out}/{outlock.LOCK_NAME}"
    fs = fsspec.filesystem("memory")
    live = {"command": "train", "pid": 7, "host": "vm-1", "since": "2026-12-01T00:00:00Z", "heartbeat": time.time()}
    fs.pipe(lock.replace("memory://", "/"), json.dumps(live).encode())
    with pytest.raises(outlock.OutputBusy, match=r"radio train \(pid 7 on vm-1"):
        with outlock.hold(out, "evaluate"):
            pass
    stale = dict(live, heartbeat=time.time() - outlock.STALE_S - 1)
    fs.pipe(lock.replace("memory://", "/"), json.dumps(stale).encode())
    with outlock.hold(out, "evaluate"):
        assert json.loads(fs.cat(lock.replace("memory://", "/")))["command"] == "evaluate"
    assert not fs.exists(lock.replace("memory://", "/"))


def test_preprocess_into_a_dataset_another_run_is_writing_is_one_line_exit_2(tmp_path, capsys):
    p = _holder(tmp_path / "ds")
    try:
        rc, out, err = run_cli(["preprocess", "--input", str(CLIP), "--output", str(tmp_path / "ds"),
                                "--no-progress"], capsys)
    finally:
        p.kill()
        p.wait()
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "is writing" in err, err
    assert sorted(x.name for x in (tmp_path / "ds").iterdir()) == [outlock.LOCK_NAME]   # the holder's; nothing claimed


def test_remote_lock_of_a_dead_process_on_this_machine_or_a_boot_ago_is_taken_over_at_once():
    import socket

    out = "memory://radio-test-lock/train"
    path = f"/radio-test-lock/train/{outlock.LOCK_NAME}"
    fs = fsspec.filesystem("memory")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    mine = {"command": "train", "pid": int(dead.stdout), "host": socket.gethostname(), "boot": outlock._boot_id(),
            "since": "x", "heartbeat": time.time()}
    fs.pipe(path, json.dumps(mine).encode())
    with outlock.hold(out, "train"):            # its process has exited
        pass
    fs.pipe(path, json.dumps(dict(mine, pid=os.getpid(), boot="an-earlier-boot")).encode())
    with outlock.hold(out, "train"):            # a preempted VM, restarted: same host, another boot
        pass
    fs.pipe(path, json.dumps(dict(mine, pid=os.getpid())).encode())
    with pytest.raises(outlock.OutputBusy):     # alive here
        with outlock.hold(out, "train"):
            pass


def test_train_on_an_output_another_run_is_writing_is_one_line_exit_2(tmp_path, capsys, sample_dataset):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    saving = run / "checkpoints" / ".tmp-0123-step-000000002.pt"   # the live run's checkpoint being written
    saving.write_bytes(b"half a checkpoint")
    p = _holder(run)
    try:
        rc, out, err = run_cli(["train", "--config", "smoke-cpu", "--data", str(sample_dataset), "--output", str(run),
                                "--set", "run.steps=1"], capsys)
    finally:
        p.kill()
        p.wait()
    assert rc == 2 and "is writing" in err and len(err.strip().splitlines()) == 1, err
    assert saving.exists()    # before: the second start removed it ("temporaries that interrupted writes left")


def test_a_mistake_leaves_no_parent_folders_the_lock_made(tmp_path):
    from preprocess.errors import UserError

    with pytest.raises(UserError):
        with outlock.hold(str(tmp_path / "np1" / "a" / "b"), "train"):
            raise UserError("bad --set")
    assert list(tmp_path.iterdir()) == []


def test_a_free_lock_file_this_user_cannot_write_is_taken_over(tmp_path, monkeypatch):
    """Another user's killed run left its lock file (mode 644): PermissionError traceback before."""
    (tmp_path / "ds").mkdir()
    lock = tmp_path / "ds" / outlock.LOCK_NAME
    lock.write_text('{"command": "preprocess", "pid": 1, "host": "other"}')
    real_open, refused = os.open, []

    def as_another_user(path, flags, *mode):
        if str(path) == str(lock) and lock.exists() and lock.stat().st_ino not in refused and flags & os.O_RDWR:
            refused.append(lock.stat().st_ino)
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *mode)

    monkeypatch.setattr(outlock.os, "open", as_another_user)
    with outlock.hold(str(tmp_path / "ds"), "preprocess"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert len(refused) == 1


FORKING_HOLDER = """
import os, sys, time
from preprocess import outlock
with outlock.hold(sys.argv[1], "train"):
    r, w = os.pipe()
    child = os.fork()              # a loader worker
    if child == 0:
        os.write(w, b"1")          # running: its at-fork hook has closed its copy of the lock
        time.sleep(60)
        os._exit(0)
    os.read(r, 1)                  # (under load the child may not have run yet when the parent is killed)
    print(child, flush=True)
    time.sleep(120)
"""


def test_a_killed_holders_forked_children_do_not_keep_its_lock(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", FORKING_HOLDER, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    child = int(p.stdout.readline())
    try:
        p.kill()
        p.wait()
        with outlock.hold(str(tmp_path / "run"), "train"):   # the child lives on, the lock is free
            assert os.path.exists(f"/proc/{child}")
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_dangling_symlink_output_is_one_line(tmp_path, capsys):
    (tmp_path / "dang").symlink_to(tmp_path / "nowhere")
    rc, out, err = run_cli(["preprocess", "--input", str(CLIP), "--output", str(tmp_path / "dang")], capsys)
    assert rc == 2 and "symbolic link" in err and "Traceback" not in err, err
