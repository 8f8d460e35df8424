"""Atomic, streaming Parquet output for one source video.

Rows are appended one segment at a time as row groups of a local temporary file (memory stays
flat in video length); ``commit`` moves the finished file to its deterministic URI in one step.
Nothing is visible under the final name until the file is complete, so a crash leaves no
partial shard, and a re-run writes the same bytes under the same name.

Temporaries have unique names (a uuid: process ids repeat across containers on one Dataflow
worker). A local one lives in ``$TMPDIR/<prefix><uuid>/`` beside a lock that its writer holds
(``flock``, released by the kernel when the process dies, even by SIGKILL), so
``remove_stale_local`` can delete what dead writers left without touching live ones.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import logging
import os
import shutil
import tempfile
import time
import uuid
from typing import Any, Iterable, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from preprocess import uri as uri_mod

log = logging.getLogger(__name__)
TEMP_PREFIX = "radio-shard-"
_LOCK = ".lock"


class AtomicParquetWriter:
    """Write rows of ``schema`` to ``dest`` (any fsspec URI), atomically on ``commit``.

    After ``commit``, ``size`` and ``sha256`` describe the bytes written under ``dest``.
    """

    def __init__(self, dest: str, schema: pa.Schema, metadata: dict[bytes, bytes] | None = None,
                 compression: str = "zstd", temp_prefix: str = TEMP_PREFIX):
        self.dest = dest
        self.schema = schema.with_metadata(metadata) if metadata else schema
        self._lock = None
        self._writer = None
        self._dir, self._lock = _new_locked_dir(temp_prefix)
        try:
            self._tmp = os.path.join(self._dir, "part.parquet")
            self._writer = pq.ParquetWriter(self._tmp, self.schema, compression=compression)
        except BaseException:
            self._cleanup()
            raise
        self.n_rows = 0
        self.size: int | None = None
        self.sha256: str | None = None

    def write_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if rows:
            self._writer.write_table(pa.Table.from_pylist(rows, schema=self.schema))
            self.n_rows += len(rows)

    def commit(self) -> str:
        try:
            self._writer.close()
            self.size, self.sha256 = file_digest(self._tmp)
            fs, path = fsspec.core.url_to_fs(self.dest)
            parent = os.path.dirname(path)
            fs.makedirs(parent, exist_ok=True)
            if uri_mod.is_local(self.dest) and _same_device(self._tmp, parent):
                os.replace(self._tmp, path)
            else:
                _copy_rename(fs, self._tmp, path)
        finally:
            self._cleanup()
        return self.dest

    def abort(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
        except OSError:
            pass  # a full disk fails the close too: the file goes anyway
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()  # after the removal: a cleaner never sees it unlocked and present
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()


def file_digest(path: str) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a local file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def _new_locked_dir(prefix: str):
    """``($TMPDIR/<prefix><uuid>, its locked .lock file)``. The folder is made and locked under a hidden
    name and only then renamed into the ``<prefix>*`` namespace, so :func:`remove_stale_local` never
    sees it unlocked (it used to be able to, between mkdir and flock, and removed a folder in use)."""
    name = f"{prefix}{uuid.uuid4().hex}"
    hidden = os.path.join(tempfile.gettempdir(), f".creating-{name}")
    os.mkdir(hidden, 0o700)
    lock = None
    try:
        lock = open(os.path.join(hidden, _LOCK), "wb")
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        final = os.path.join(tempfile.gettempdir(), name)
        os.rename(hidden, final)              # the open, locked file moves with its folder
        return final, lock
    except BaseException:
        shutil.rmtree(hidden, ignore_errors=True)
        if lock is not None:
            lock.close()
        raise


@contextlib.contextmanager
def locked_temp_dir(prefix: str) -> Iterator[str]:
    """A fresh ``$TMPDIR/<prefix><uuid>`` folder that holds a lock (flock) while the block runs and is
    removed after it: :func:`remove_stale_local` removes such folders of killed processes (lock free)
    and never one in use."""
    d, lock = _new_locked_dir(prefix)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
        lock.close()  # after the removal: a cleaner never sees it unlocked and present


def remove_stale_local(prefix: str, min_age_s: float = 60.0) -> list[str]:
    """Delete ``$TMPDIR/<prefix>*`` folders whose writer is gone (its lock is free), or that never
    got a lock and are older than ``min_age_s``. Returns what was removed."""
    removed = []
    tmp = glob.escape(tempfile.gettempdir())
    for d in glob.glob(os.path.join(tmp, ".creating-" + glob.escape(prefix) + "*")):
        try:                                  # killed between mkdir and rename (_new_locked_dir)
            if time.time() - os.stat(d).st_mtime >= min_age_s:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
        except FileNotFoundError:
            continue
    for d in glob.glob(os.path.join(tmp, glob.escape(prefix) + "*")):
        try:
            with open(os.path.join(d, _LOCK), "rb") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while its writer lives
                shutil.rmtree(d, ignore_errors=True)
        except BlockingIOError:
            continue
        except FileNotFoundError:
            try:
                if time.time() - os.stat(d).st_mtime < min_age_s:
                    continue  # being created right now
            except FileNotFoundError:
                continue
            shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    if removed:
        log.info("removed %d stale temporary folder(s) %s*", len(removed), prefix)
    return removed


def _same_device(a: str, b_dir: str) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b_dir).st_dev
    except OSError:
        return False


def temp_name(path: str) -> str:
    """A hidden, unique sibling of ``path`` for an upload in progress (readers skip dot files)."""
    parent, name = os.path.split(path)
    return f"{parent}/{uri_mod.temp_basename(name)}"


def _copy_rename(fs, local: str, path: str) -> None:
    """Upload next to the destination under a hidden temp name, then rename (gs: copy+delete).
    A failed upload removes its temporary (best effort: ``remove_stale`` catches the rest)."""
    tmp = temp_name(path)
    try:
        fs.put_file(local, tmp)
        uri_mod.move_file(fs, tmp, path)
    except BaseException:
        try:
            if fs.exists(tmp):
                uri_mod.remove_file(fs, tmp)
        except Exception:  # the store may be the thing that is failing
            log.warning("could not remove the temporary %s", tmp)
        raise


def write_table_atomic(dest: str, rows: list[dict[str, Any]], schema: pa.Schema,
                       metadata: dict[bytes, bytes] | None = None,
                       temp_prefix: str = TEMP_PREFIX) -> str:
    """Write a small table in one go (rejects, summaries)."""
    w = AtomicParquetWriter(dest, schema, metadata, temp_prefix=temp_prefix)
    try:
        w.write_rows(rows)
    except BaseException:
        w.abort()
        raise
    return w.commit()
