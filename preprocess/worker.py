"""Run sources in a child process that holds the landmark backend, so a killed worker is retried.

The kernel's OOM killer (or anything else) can SIGKILL the process doing a source's work. In the
Beam worker itself that ends the local job (FnApiRunner) or costs the whole bundle. Here the
work runs in a child started once per DoFn instance (``python -m preprocess.worker``: a fresh
interpreter, not a fork, so a CUDA context or an OpenMP pool in the backend is never copied
mid-use); the Beam worker only sends it source items and gets back result dicts over a pipe.
A child that dies mid-source is an environment failure (``ChildDied``): the caller retries,
and the next ``run`` starts a new child. So is a child that hangs (a stalled read, a decoder
spinning on a pathological file): while it works it sends progress (frames decoded, bytes
copied, a stage begun; ``preprocess.progress``), at most twice a second, which the parent
forwards to its own progress reporting; a child silent for ``worker.stall_s`` is killed
(``ChildStalled``) and the source retried, then reported ``failed`` like any environment failure.

Cost (bench/README.md, "i9a"): one start per worker (interpreter, backend, warm-up), then a few
hundred microseconds per source for the round trip.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from preprocess import progress
from preprocess.failures import EnvironmentFailure

log = logging.getLogger(__name__)


class ChildDied(EnvironmentFailure):
    """The child process ended mid-source (killed by a signal, or exited)."""


class ChildStalled(EnvironmentFailure):
    """The child sent nothing for ``worker.stall_s`` seconds mid-source and was killed."""


class ChildError(RuntimeError):
    """The child raised an error that is not an environment failure (a bug): not retried."""


class SourceWorker:
    """``run(item)`` = ``source.run_source(item, cfg, backend, dataset)`` in a child process."""

    def __init__(self, cfg_dict: dict, dataset: str, *, stall_s: float = 0.0, progress_every_s: float = 0.5):
        self.cfg_dict, self.dataset = cfg_dict, dataset
        self.stall_s, self.progress_every_s = stall_s, progress_every_s   # stall_s 0: no watchdog
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        to_child_r, to_child_w = os.pipe()
        to_parent_r, to_parent_w = os.pipe()
        # this process's import path, and not the current folder ('-m' would put it first: a
        # preprocess.py there would replace radio's code): see pipelines.options.pin_worker_imports
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "PYTHONSAFEPATH": "1"}
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "preprocess.worker", str(to_child_r), str(to_parent_w)],
                pass_fds=(to_child_r, to_parent_w), env=env, stdin=subprocess.DEVNULL)
        except BaseException:
            os.close(to_parent_r)
            os.close(to_child_w)
            raise
        finally:
            os.close(to_child_r)
            os.close(to_parent_w)
        self._conn = _Duplex(to_parent_r, to_child_w)
        self._conn.send((self.cfg_dict, self.dataset, self.progress_every_s))
        self._reply()  # ("ready",) once the backend is loaded (a hung load is a stall too)

    def run(self, item: dict) -> dict[str, Any]:
        if self._proc is None or self._proc.poll() is not None:
            self.close()
            self.start()
        try:
            self._conn.send(("run", item))
        except OSError as e:  # the child is gone
            raise self._died() from e
        return self._reply()

    def _reply(self):
        """The child's answer; its progress messages on the way are forwarded, and a silence of
        ``stall_s`` kills it."""
        while True:
            try:
                if self.stall_s and not self._conn.poll(self.stall_s):
                    raise self._stalled()
                kind, *rest = self._conn.recv()
            except (EOFError, OSError) as e:
                raise self._died() from e
            if kind == "expect":
                progress.expect(rest[0])
                continue
            if kind != "progress":
                break
            progress.frames(rest[0])
        if kind == "ok":
            return rest[0] if rest else None
        exc_type, text, is_env = rest
        if is_env:
            raise EnvironmentFailure(f"in the worker's child: {text}")
        raise ChildError(f"{exc_type} in the worker's child process:\n{text}")

    def _died(self) -> ChildDied:
        proc, self._proc = self._proc, None
        rc = proc.wait() if proc is not None else None
        self._close_conn()
        how = (f"killed by {signal.Signals(-rc).name}" if rc is not None and rc < 0 else f"exited with {rc}")
        return ChildDied(f"the worker's child process was {how} (out of memory?)")

    def _stalled(self) -> ChildStalled:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
        self._close_conn()
        return ChildStalled(f"the worker's child process made no progress for {self.stall_s:g} s "
                            "(worker.stall_s) and was killed")

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        """Stop the child (it exits when its pipe closes; killed if it does not within 10 s)."""
        proc, self._proc = self._proc, None
        self._close_conn()
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class _Duplex:
    """send/recv over two one-way pipes (multiprocessing's framing and pickling)."""

    def __init__(self, read_fd: int, write_fd: int):
        self._r, self._w = Connection(read_fd, writable=False), Connection(write_fd, readable=False)

    def send(self, obj) -> None:
        self._w.send(obj)

    def recv(self):
        return self._r.recv()

    def poll(self, timeout: float) -> bool:
        return self._r.poll(timeout)

    def close(self) -> None:
        self._r.close()
        self._w.close()


def _watch_parent() -> None:
    """End this child when its parent is gone (SIGKILLed jobs leave no orphan working on)."""
    parent = os.getppid()

    def watch():
        while True:
            threading.Event().wait(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="watch-parent").start()


def _child(read_fd: int, write_fd: int) -> None:
    from preprocess import config as config_mod
    from preprocess import failures, shards, source
    from preprocess import uri as uri_mod

    conn = _Duplex(read_fd, write_fd)
    _watch_parent()
    cfg_dict, dataset, progress_every_s = conn.recv()

    def reply_error(e: BaseException) -> None:
        env = failures.is_environment_error(e)
        text = failures.describe(e) if env else "".join(traceback.format_exception(e))[-4000:]
        conn.send(("error", type(e).__name__, text, env))

    try:
        cfg = config_mod.from_dict(source.PreprocessConfig, cfg_dict)
        backend = source.load_backend(cfg)
        source.warm_up()
        shards.remove_stale_local(dataset)
        uri_mod.remove_stale_copies()      # copies of remote sources that killed workers left
    except Exception as e:
        reply_error(e)
        return
    conn.send(("ok",))
    sent, done = [time.monotonic()], [0]

    def report(n: int) -> None:          # progress.frames/beat inside run_source: tell the parent
        done[0] += n
        if time.monotonic() - sent[0] >= progress_every_s:
            conn.send(("progress", done[0]))
            sent[0], done[0] = time.monotonic(), 0

    while True:
        try:
            _cmd, item = conn.recv()
        except EOFError:
            return
        sent[0], done[0] = time.monotonic(), 0      # this item's frames only
        try:
            with progress.reporting(report, expect=lambda n: conn.send(("expect", n))):
                result = source.run_source(item, cfg, backend, dataset)
            if done[0]:   # the rest, not carried into the next item's count (the bar said 1.9x the frames)
                conn.send(("progress", done[0]))
            conn.send(("ok", result))
        except Exception as e:
            reply_error(e)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _child(int(sys.argv[1]), int(sys.argv[2]))
