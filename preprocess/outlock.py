"""One run at a time per output: the lock a job holds on the location it writes.

Every radio job starts by removing what killed runs of its output left (``.tmp-*`` uploads,
``beam-temp-*`` folders, checkpoint temporaries) and, for evaluate, the earlier run of its id. With
two runs on one output (a cron job and a manual rerun, a restarted VM whose old run still saves)
that clean-up deleted the live run's files: a checkpoint lost mid-save, an evaluate run that
reported success over empty tables, a dub manifest deleted after the other run announced it. So a
job takes this lock before its first write and a second one is refused in one line (exit 2),
naming the holder.

- Local output: ``flock`` on ``OUTPUT/.radio.lock``, removed when the run ends (the kernel
  releases the lock when the holder dies, even by SIGKILL; a lock file left behind is free).
- Remote output (``gs://``): no object-store lock exists, so the holder writes
  ``OUTPUT/.radio.lock`` with a heartbeat every ``HEARTBEAT_S``; a lock whose heartbeat is older
  than ``STALE_S`` belongs to a dead launcher and is taken over, as is one whose holder ran on
  this machine and is gone (exited, or a boot ago: a preempted training VM restarting). Best
  effort: two starts within the same few hundred milliseconds can both pass.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import fsspec

from preprocess import uri as uri_mod
from preprocess.errors import UserError

LOCK_NAME = ".radio.lock"
HEARTBEAT_S = 60.0
STALE_S = 300.0


class OutputBusy(UserError):
    """Another radio run is writing this output."""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _job() -> str | None:
    """The torchrun job this process belongs to (its rendezvous id), if any."""
    return os.environ.get("TORCHELASTIC_RUN_ID")


def _owner(command: str) -> dict:
    return {"command": command, "pid": os.getpid(), "host": socket.gethostname(), "boot": _boot_id(),
            "job": _job(), "since": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "heartbeat": time.time()}


def check_not_held_by_another_job(output: str, name: str = LOCK_NAME) -> None:
    """For the ranks of a torchrun job that do not take the lock (its main rank does):
    :class:`OutputBusy` when a live holder of another job has it. Without this a second torchrun's
    other ranks waited in the rendezvous for a main rank that had already refused, until torchrun
    killed them 30 s later. Reads only: the lock is never taken here."""
    uri = uri_mod.join(output, name)
    try:
        owner = _parse(uri_mod.read_bytes(uri)) if uri_mod.exists(uri) else None
    except (FileNotFoundError, PermissionError):
        return
    if owner is None or owner.get("job") == _job():
        return                                   # none, being written, or this job's own main rank
    if _alive(owner, remote=not uri_mod.is_local(output)):
        raise _busy(output, owner)


def _alive(owner: dict, *, remote: bool) -> bool:
    """Whether the holder ``owner`` still runs, as far as this machine can tell: on a remote
    output, a heartbeat under ``STALE_S`` old; on a local one (a file removed at release, so it
    is held or left by a dead holder), a holder on this machine. Never one that is gone here."""
    if _dead_here(owner):
        return False
    if remote:
        return time.time() - float(owner.get("heartbeat", 0)) < STALE_S
    return owner.get("host") == socket.gethostname()


def _dead_here(owner: dict) -> bool:
    """The holder ran on this machine and is gone: a boot ago (a preempted VM restarted by
    ``launch_vm.sh --watch`` must not wait out ``STALE_S``), or its process has exited."""
    if owner.get("host") != socket.gethostname():
        return False
    if owner.get("boot") != _boot_id():
        return True
    try:
        os.kill(int(owner.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
    return False


def _describe(owner: dict | None) -> str:
    if not owner:
        return "another radio run"
    return f"radio {owner.get('command', '?')} (pid {owner.get('pid', '?')} on {owner.get('host', '?')}, since " \
           f"{owner.get('since', '?')})"


def _busy(output: str, owner: dict | None) -> OutputBusy:
    return OutputBusy(f"{_describe(owner)} is writing {output}: wait for it to end, or stop it, then run this again "
                      "(two runs on one output delete each other's files).")


def _parse(data: bytes) -> dict | None:
    try:
        owner = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


@contextmanager
def hold(output: str, command: str, *, name: str = LOCK_NAME) -> Iterator[None]:
    """Hold the lock ``name`` in ``output`` for the ``with`` body; :class:`OutputBusy` when another
    live run holds it. A user's mistake raised in the body leaves no new lock file behind."""
    if uri_mod.is_local(output):
        with _hold_local(output, command, name):
            yield
    else:
        with _hold_remote(output, command, name):
            yield


_HELD: set = set()   # lock files this process holds: closed in forked children (loader workers)


def _close_held_in_child() -> None:
    for f in list(_HELD):
        try:
            f.close()       # the child's copy of the descriptor: the lock stays with the parent's
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


def _missing_top(folder: str) -> str | None:
    """The outermost ancestor of ``folder`` (itself included) that does not exist yet."""
    top = None
    while folder and not os.path.exists(folder):
        top, folder = folder, os.path.dirname(folder)
    return top


def _open_lock(path: str, output: str):
    """The lock file, locked. A lock file this user cannot write (another user's, left by a
    killed run) is taken over when free, and reported with its holder when not."""
    while True:
        try:
            f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o666), "r+b")
        except PermissionError:
            f = open(path, "rb")                  # flock needs no write access
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = _parse(f.read())
            f.close()
            raise _busy(output, owner) from None
        try:
            same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same and f.writable():
            return f                              # locked the file that is there now
        if same:
            os.unlink(path)                       # free and not ours to write: replace it
        f.close()                                 # (or its holder removed it as we opened it)


@contextmanager
def _hold_local(output: str, command: str, name: str) -> Iterator[None]:
    folder = os.path.abspath(fsspec.core.url_to_fs(output)[1])
    created = _missing_top(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    f = _open_lock(path, output)
    _HELD.add(f)
    try:
        f.seek(0)
        f.truncate()
        f.write(json.dumps(_owner(command)).encode())
        f.flush()
        yield
    except UserError:                   # a mistake found after the lock: the output looks as it did
        if created:
            os.unlink(path)
            _remove_empty_up_to(folder, created)
        raise
    finally:
        if os.path.exists(path):
            os.unlink(path)             # before the unlock: a waiting opener sees it gone and retries
        _HELD.discard(f)
        f.close()


def _remove_empty_up_to(folder: str, top: str) -> None:
    """Remove ``folder`` and its parents up to ``top`` while they are empty (what the lock made)."""
    while True:
        try:
            os.rmdir(folder)
        except OSError:
            return
        if folder == top:
            return
        folder = os.path.dirname(folder)


@contextmanager
def _hold_remote(output: str, command: str, name: str) -> Iterator[None]:
    uri = uri_mod.join(output, name)
    if uri_mod.exists(uri):
        owner = _parse(uri_mod.read_bytes(uri))
        if owner is not None and _alive(owner, remote=True):
            raise _busy(output, owner)
    me = _owner(command)
    uri_mod.write_bytes_atomic(uri, json.dumps(me).encode())
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT_S):
            try:
                uri_mod.write_bytes_atomic(uri, json.dumps(dict(me, heartbeat=time.time())).encode())
            except Exception:  # noqa: BLE001  (a missed beat: the next one, or the lock goes stale)
                pass

    thread = threading.Thread(target=beat, name="radio-output-lock", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        try:
            fs, path = fsspec.core.url_to_fs(uri)
            uri_mod.remove_file(fs, path)
        except Exception:  # noqa: BLE001  (unreachable now: it goes stale in STALE_S)
            pass
