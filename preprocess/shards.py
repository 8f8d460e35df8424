"""Layout of a radio dataset folder, and reading it back.

    DATASET/
      rows/<source_id>.parquet      segments of one source video (SEGMENT_SCHEMA)
      rejects/<source_id>.parquet   what of that source yielded no row, and why (REJECT_SCHEMA)
      done/<source_id>.json         written last: the source is finished (counts per source, and
                                    the size and sha256 of each file it wrote)
      runs/<run_id>/summary.json    one run's counts; summary.json at the top: the latest run
      dataset.json                  fingerprint of the output-affecting config, and the version

Names depend only on the source URI, so a re-run writes the same files, never new copies.
Hidden names (``.tmp-*``) are uploads in progress: readers skip them, and a run removes those
an earlier, killed run left (``remove_stale_temporaries``).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from typing import Any, Iterator

import fsspec
import pyarrow.parquet as pq

from preprocess import config as config_mod
from preprocess import schema
from preprocess import uri as uri_mod
from preprocess import writer as writer_mod
from preprocess.errors import UserError

log = logging.getLogger(__name__)
ROWS, REJECTS, DONE, RUNS = "rows", "rejects", "done", "runs"
DATASET_INFO = "dataset.json"
#: config keys (dotted, or a section with a trailing '.') that change how a run works, never what
#: it writes: they are left out of the dataset's fingerprint
NOT_OUTPUT_KEYS = ("decode.chunk", "decode.chunk_mib", "worker.")


class DatasetConfigError(UserError, ValueError):
    pass


def _unstrip(fs, p: str) -> str:
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return p if proto in ("file", "local") else fs.unstrip_protocol(p)


def rows_uri(dataset: str, source_id: str) -> str:
    return f"{dataset.rstrip('/')}/{ROWS}/{source_id}.parquet"


def rejects_uri(dataset: str, source_id: str) -> str:
    return f"{dataset.rstrip('/')}/{REJECTS}/{source_id}.parquet"


def done_uri(dataset: str, source_id: str) -> str:
    return f"{dataset.rstrip('/')}/{DONE}/{source_id}.json"


def remove_source(dataset: str, source_id: str) -> None:
    """Remove what a source wrote: its rows, its rejects, then its done marker (last, so that a
    run killed halfway leaves the marker for the next run to find)."""
    for uri in (rows_uri(dataset, source_id), rejects_uri(dataset, source_id), done_uri(dataset, source_id)):
        uri_mod.remove_if_exists(uri)


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


def _ids(dataset: str, sub: str, suffix: str) -> list[str]:
    return [u.rsplit("/", 1)[-1][: -len(suffix)] for u in _list(dataset, sub, suffix)]


def done_source_ids(dataset: str) -> set[str]:
    return set(_ids(dataset, DONE, ".json"))


def row_source_ids(dataset: str) -> list[str]:
    """Sources with a rows file (one with no done marker: a run killed between the two writes; a
    rows file is whole, written atomically)."""
    return _ids(dataset, ROWS, ".parquet")


def rows_cover(dataset: str, source_id: str) -> dict | None:
    """What video and frames a source's rows file holds, as ``covers`` gives them for a done marker:
    ``{"source_uri", "span": (first, stop)}``, the frames of its rows; None when unreadable or empty."""
    try:
        rows = read_shard(rows_uri(dataset, source_id), ["source_uri", "start_frame", "n_frames"]).to_pylist()
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001  (a damaged file says nothing of its frames: left as it is)
        log.warning("cannot read rows of source %s: %s", source_id, e)
        return None
    if not rows:
        return None
    return {"source_uri": rows[0]["source_uri"],
            "span": (min(r["start_frame"] for r in rows), max(r["start_frame"] + r["n_frames"] for r in rows))}


def read_shard(uri: str, columns: list[str] | None = None):
    """One shard as a pyarrow Table, schema version checked."""
    with fsspec.open(uri, "rb") as f:
        table = schema.read_parquet(f, columns)
    schema.read_file_metadata(table.schema)
    return table


def iter_rows(dataset: str, columns: list[str] | None = None) -> Iterator[dict]:
    for shard in list_shards(dataset):
        yield from read_shard(shard, columns).to_pylist()


# ---- checking what an earlier run wrote ----------------------------------------------------------
def file_record(kind: str, source_id: str, size: int, sha256: str, rows: int) -> dict[str, Any]:
    """How a done marker names one output file (path relative to the dataset)."""
    return {"path": f"{kind}/{source_id}.parquet", "size": size, "sha256": sha256, "rows": rows}


def check_done(dataset: str, marker: dict, fingerprint: str) -> str | None:
    """Why the finished source of ``marker`` cannot be trusted (None: it can): made with another
    config, or a file it wrote is missing, of another size, or has no readable Parquet footer
    with the recorded row count. The files' sha256 is recorded too, for a full audit; reading
    every byte back is not part of ``--resume``."""
    if marker.get("config_fingerprint") != fingerprint:
        return "made with another config"
    if "files" not in marker:
        return "done marker records no files"
    for rec in marker["files"]:
        uri = uri_mod.join(dataset, rec["path"])
        fs, path = fsspec.core.url_to_fs(uri)
        try:
            size = fs.size(path)
        except FileNotFoundError:
            return f"{rec['path']} is missing"
        if size != rec["size"]:
            return f"{rec['path']} has {size} bytes, not {rec['size']}"
        try:
            with fs.open(path, "rb") as f:
                rows = pq.ParquetFile(f).metadata.num_rows
        except Exception as e:  # noqa: BLE001  (pyarrow raises several types for a bad footer)
            return f"{rec['path']} has no readable Parquet footer ({type(e).__name__}: {e})"
        if rows != rec["rows"]:
            return f"{rec['path']} has {rows} rows, not {rec['rows']}"
    return None


# ---- the dataset's config fingerprint ---------------------------------------------------------
def output_config(cfg: dict) -> dict[str, Any]:
    """The output-affecting part of a preprocess config, flat (``align.crop_size``: 192, ...)."""
    flat = config_mod.flatten(json.loads(json.dumps(cfg, default=str)))  # tuples -> lists, as stored
    return {k: v for k, v in sorted(flat.items())
            if not any(k == n or (n.endswith(".") and k.startswith(n)) for n in NOT_OUTPUT_KEYS)}


def config_fingerprint(cfg: dict) -> str:
    data = json.dumps(output_config(cfg), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def changed_keys(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k, "<unset>") != new.get(k, "<unset>"))


def read_dataset_info(dataset: str) -> dict | None:
    try:
        return json.loads(uri_mod.read_bytes(uri_mod.join(dataset, DATASET_INFO)))
    except FileNotFoundError:
        return None


def claim_dataset(dataset: str, cfg: dict, *, new_version: bool = False) -> dict:
    """Record this config's fingerprint in ``dataset.json``, or refuse (one line, the changed keys)
    when the dataset was made with another output-affecting config, unless ``new_version``: then
    the dataset's version goes up, and the earlier version's done markers no longer count."""
    flat, fp = output_config(cfg), config_fingerprint(cfg)
    info = read_dataset_info(dataset)
    if info is not None and info.get("fingerprint") == fp:
        return info
    if info is not None and not new_version:
        keys = changed_keys(info.get("config", {}), flat)
        shown = ", ".join(f"{k} ({info.get('config', {}).get(k, '<unset>')!r} -> {flat.get(k, '<unset>')!r})"
                          for k in keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
        raise DatasetConfigError(
            f"{dataset} was made with another config (version {info.get('version', 1)}): {shown}; "
            f"use the same config, or pass --new-version to redo every source as the next version")
    version = (info or {}).get("version", 0) + 1
    if info is not None:
        log.warning("%s: version %d (another config): this run redoes the sources of its input; the "
                    "dataset's other sources keep version %d's rows until a run with them redoes them "
                    "(radio preprocess --resume with the whole input)", dataset, version, version - 1)
    info = {"fingerprint": fp, "version": version, "config": flat,
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    uri_mod.write_bytes_atomic(uri_mod.join(dataset, DATASET_INFO),
                               json.dumps(info, indent=2, sort_keys=True).encode())
    return info


# ---- temporaries ----------------------------------------------------------------------------------
def _dataset_key(dataset: str) -> str:
    d = dataset.rstrip("/")
    return os.path.abspath(d) if uri_mod.is_local(d) and "://" not in d else d


def temp_prefix(dataset: str) -> str:
    """Prefix of the local temporary folders of this dataset's writers (``$TMPDIR/<prefix><uuid>``)."""
    return f"{writer_mod.TEMP_PREFIX}{hashlib.sha1(_dataset_key(dataset).encode()).hexdigest()[:12]}-"


def remove_stale_local(dataset: str) -> list[str]:
    """This machine's ``$TMPDIR`` folders of dead writers of this dataset (safe beside live ones)."""
    return writer_mod.remove_stale_local(temp_prefix(dataset))


def remove_named(base: str, subs, prefixes: tuple[str, ...] = (".tmp-",)) -> list[str]:
    """Delete the entries of the folders ``base/<sub>`` whose names start with one of ``prefixes``
    (listed, not globbed: ``base`` may hold ``[ ] * ?``); returns their URIs."""
    fs, root = fsspec.core.url_to_fs(base)
    removed = []
    for sub in subs:
        folder = f"{root.rstrip('/')}/{sub}".rstrip("/")
        if not fs.isdir(folder):
            continue
        for p in fs.ls(folder, detail=False):
            if p.rstrip("/").rsplit("/", 1)[-1].startswith(prefixes):
                uri_mod.remove_tree(fs, p)
                removed.append(_unstrip(fs, p))
    return removed


def remove_stale_temporaries(dataset: str) -> list[str]:
    """Delete what killed runs of this dataset left: hidden ``.tmp-*`` uploads in its folders, and
    local ``$TMPDIR/radio-shard-<dataset>-*`` folders whose writer is dead. Call it before a run
    starts: two runs writing one dataset at the same time are not supported."""
    removed = remove_stale_local(dataset)
    removed += remove_named(dataset, ("", ROWS, REJECTS, DONE, RUNS, "index"))   # index/: a compacted dataset's
    if removed:
        log.info("removed %d stale temporaries of %s", len(removed), dataset)
    return removed
