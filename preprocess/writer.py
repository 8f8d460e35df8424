"""Atomic, streaming Parquet output for one source video.

Rows are appended one segment at a time as row groups of a local temporary file (memory stays
flat in video length); ``commit`` moves the finished file to its deterministic URI in one step.
Nothing is visible under the final name until the file is complete, so a crash leaves no
partial shard, and a re-run writes the same bytes under the same name.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Iterable

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from preprocess import uri as uri_mod


class AtomicParquetWriter:
    """Write rows of ``schema`` to ``dest`` (any fsspec URI), atomically on ``commit``."""

    def __init__(self, dest: str, schema: pa.Schema, metadata: dict[bytes, bytes] | None = None,
                 compression: str = "zstd"):
        self.dest = dest
        self.schema = schema.with_metadata(metadata) if metadata else schema
        self._dir = tempfile.mkdtemp(prefix="radio-shard-")
        self._tmp = os.path.join(self._dir, "part.parquet")
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression=compression)
        self.n_rows = 0

    def write_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if rows:
            self._writer.write_table(pa.Table.from_pylist(rows, schema=self.schema))
            self.n_rows += len(rows)

    def commit(self) -> str:
        self._writer.close()
        try:
            fs, path = fsspec.core.url_to_fs(self.dest)
            parent = os.path.dirname(path)
            fs.makedirs(parent, exist_ok=True)
            if uri_mod.is_local(self.dest):
                os.replace(self._tmp, path) if _same_device(self._tmp, parent) else _copy_rename(fs, self._tmp, path)
            else:
                _copy_rename(fs, self._tmp, path)
        finally:
            self._cleanup()
        return self.dest

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        for name in os.listdir(self._dir):
            os.unlink(os.path.join(self._dir, name))
        os.rmdir(self._dir)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()


def _same_device(a: str, b_dir: str) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b_dir).st_dev
    except OSError:
        return False


def _copy_rename(fs, local: str, path: str) -> None:
    """Upload next to the destination under a hidden temp name, then rename (gs: copy+delete)."""
    parent, name = os.path.split(path)
    tmp = f"{parent}/.tmp-{os.getpid()}-{name}"
    fs.put_file(local, tmp)
    fs.mv(tmp, path)


def write_table_atomic(dest: str, rows: list[dict[str, Any]], schema: pa.Schema,
                       metadata: dict[bytes, bytes] | None = None) -> str:
    """Write a small table in one go (rejects, summaries)."""
    w = AtomicParquetWriter(dest, schema, metadata)
    try:
        w.write_rows(rows)
    except BaseException:
        w.abort()
        raise
    return w.commit()
