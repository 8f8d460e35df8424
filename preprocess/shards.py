"""Layout of a radio dataset folder, and reading it back.

    DATASET/
      rows/<source_id>.parquet      segments of one source video (SEGMENT_SCHEMA)
      rejects/<source_id>.parquet   what of that source yielded no row, and why (REJECT_SCHEMA)
      done/<source_id>.json         written last: the source is finished (counts per source)
      runs/<run_id>/summary.json    one run's counts; summary.json at the top: the latest run

Names depend only on the source URI, so a re-run writes the same files, never new copies.
"""
from __future__ import annotations

from typing import Iterator

import fsspec
import pyarrow.parquet as pq

from preprocess import schema

ROWS, REJECTS, DONE, RUNS = "rows", "rejects", "done", "runs"


def _unstrip(fs, p: str) -> str:
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return p if proto in ("file", "local") else fs.unstrip_protocol(p)


def rows_uri(dataset: str, source_id: str) -> str:
    return f"{dataset.rstrip('/')}/{ROWS}/{source_id}.parquet"


def rejects_uri(dataset: str, source_id: str) -> str:
    return f"{dataset.rstrip('/')}/{REJECTS}/{source_id}.parquet"


def done_uri(dataset: str, source_id: str) -> str:
    return f"{dataset.rstrip('/')}/{DONE}/{source_id}.json"


def _list(dataset: str, sub: str, suffix: str) -> list[str]:
    fs, path = fsspec.core.url_to_fs(dataset)
    folder = f"{path.rstrip('/')}/{sub}"
    if not fs.isdir(folder):
        return []
    return sorted(_unstrip(fs, p) for p in fs.ls(folder, detail=False)
                  if p.endswith(suffix) and not p.rsplit("/", 1)[-1].startswith("."))


def list_shards(dataset: str) -> list[str]:
    """Row shards of a dataset folder (or ``[dataset]`` when it is one .parquet file)."""
    if dataset.endswith(".parquet"):
        return [dataset]
    return _list(dataset, ROWS, ".parquet")


def list_rejects(dataset: str) -> list[str]:
    return _list(dataset, REJECTS, ".parquet")


def done_source_ids(dataset: str) -> set[str]:
    return {u.rsplit("/", 1)[-1][: -len(".json")] for u in _list(dataset, DONE, ".json")}


def read_shard(uri: str, columns: list[str] | None = None):
    """One shard as a pyarrow Table, schema version checked."""
    with fsspec.open(uri, "rb") as f:
        table = pq.read_table(f, columns=columns)
    schema.read_file_metadata(table.schema)
    return table


def iter_rows(dataset: str, columns: list[str] | None = None) -> Iterator[dict]:
    for shard in list_shards(dataset):
        yield from read_shard(shard, columns).to_pylist()
