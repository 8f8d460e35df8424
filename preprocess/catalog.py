"""What a dataset's row shards hold, checked from their Parquet footers before anything reads rows.

``check(dataset, columns)`` lists ``rows/*.parquet`` with sizes, reads every shard's footer in
parallel threads (a footer is a few KiB at the end of the file) and checks: the footer parses (a
file cut short has no closing magic bytes), the radio schema version in its metadata, and the
``columns`` a reader needs, with SEGMENT_SCHEMA's types. A good shard's row groups (rows,
compressed bytes) and how many of its rows carry a ``split`` (from column statistics) come back
with it, so no reader opens a shard just to learn its shape.

Results are cached per dataset in a local file (``$RADIO_CACHE_DIR``, default ``~/.cache/radio``),
one entry per shard keyed by its (name, size, etag/mtime): a restart re-checks only new or
changed shards. Both dataset layouts read the same: per-source shards (``radio preprocess``, one
small file per source video) and compacted ones (``radio compact``, large files of many row
groups). ``pieces`` cuts them into read units of about ``PIECE_BYTES`` at row-group boundaries.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable

import fsspec
import pyarrow.parquet as pq

from preprocess import failures, schema, shards

log = logging.getLogger("preprocess.catalog")

CACHE_VERSION = 1
PIECE_BYTES = 4 << 20    # read unit: consecutive row groups of one shard, at least this many bytes


@dataclass
class ShardInfo:
    uri: str
    size: int
    tag: str                                  # etag / generation / mtime: a changed file re-checks
    error: str | None = None                  # why the shard is unusable (None: good)
    rows: int = 0
    groups: list = field(default_factory=list)   # [(rows, compressed bytes)] per row group
    split_rows: int = -1                      # rows whose split is set (-1: no statistics)


@dataclass(frozen=True, slots=True)
class Piece:
    """Row groups ``first .. first + count - 1`` of shard ``shard`` (an index into the good shards)."""
    shard: int
    first: int
    count: int
    whole: bool                                # the piece is the whole file


def cache_dir() -> str:
    return os.environ.get("RADIO_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "radio")


def change_tag(entry: dict) -> str:
    """What an ``fs.ls``/``fs.info`` entry says changes when the file does (etag, generation, md5, mtime)."""
    for key in ("etag", "generation", "md5Hash", "mtime", "LastModified", "created"):
        if entry.get(key) is not None:
            return str(entry[key])
    return ""


def fingerprint(uri: str | None) -> dict | None:
    """Which file is at ``uri``, without reading it: ``{"size", "tag"}`` (``change_tag``: mtime of a
    local file, etag / generation / md5 of a remote one), for telling a rewritten or replaced input
    from the one an earlier run used (dub's markers, evaluate's rows). None when there is no such
    file. Network errors propagate (retried)."""
    if not uri:
        return None
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        info = fs.info(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return {"size": str(info.get("size")), "tag": change_tag(info)}


def list_detail(dataset: str, sub: str = shards.ROWS, suffix: str = ".parquet") -> list[tuple[str, int, str]]:
    """(uri, size, tag) of the files ``sub/*suffix`` of a dataset, sorted by name (or the dataset
    itself when it is one .parquet file)."""
    fs, path = fsspec.core.url_to_fs(dataset)
    if dataset.endswith(suffix):
        return [(dataset, int(fs.size(path)), "")]
    folder = f"{path.rstrip('/')}/{sub}"
    if not fs.isdir(folder):
        return []
    out = [(shards._unstrip(fs, e["name"]), int(e.get("size") or 0), change_tag(e))
           for e in fs.ls(folder, detail=True)
           if e["name"].endswith(suffix) and not e["name"].rsplit("/", 1)[-1].startswith(".")]
    return sorted(out)


def inspect_footer(uri: str, size: int, tag: str, columns: list[str]) -> ShardInfo:
    """One shard's footer, checked; a content problem becomes ``error``, I/O errors propagate."""
    info = ShardInfo(uri, size, tag)
    try:
        with fsspec.open(uri, "rb") as f:
            md = pq.read_metadata(f)
    except (OSError, ValueError) as e:  # pyarrow: ArrowInvalid (ValueError) for a bad footer
        if isinstance(e, OSError) and not is_content_error(e):
            raise
        info.error = f"unreadable Parquet footer ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        return info
    arrow = md.schema.to_arrow_schema()
    try:
        schema.read_file_metadata(arrow)
    except ValueError as e:
        info.error = str(e)
        return info
    wrong = []
    for name in columns:
        want = schema.SEGMENT_SCHEMA.field(name).type
        got = arrow.field(name).type if name in arrow.names else None
        if got is None and name in schema.ADDED_COLUMNS:
            continue  # a shard from before the column was added: null (schema.conform)
        if got is None:
            wrong.append(f"missing column {name!r}")
        elif got != want:
            wrong.append(f"column {name!r} is {got}, expected {want}")
    if wrong:
        info.error = "; ".join(wrong)
        return info
    info.rows = md.num_rows
    info.groups = [(md.row_group(g).num_rows,
                    sum(md.row_group(g).column(c).total_compressed_size for c in range(md.num_columns)))
                   for g in range(md.num_row_groups)]
    info.split_rows = _split_rows(md)
    return info


def is_content_error(e: OSError) -> bool:
    """Whether pyarrow's OSError is about the file's bytes ("Corrupt snappy compressed data",
    "Couldn't deserialize thrift", ...), not the storage (a network or disk error). An environment
    error (EIO, a timeout, also when only the text has its errno) never is; a shard gone since the
    listing is (skipped like a damaged one). The words are looked for in the message less its paths:
    every message names the shard (``…/x.parquet``), so a disk's EIO once read as a damaged shard,
    skipped for the run and cached as bad until the file changed."""
    if failures.is_environment_error(e):
        return False
    if isinstance(e, FileNotFoundError):
        return True
    text = " ".join(w for w in str(e).lower().split() if "/" not in w and ".parquet" not in w)
    return any(s in text for s in ("magic bytes", "parquet", "thrift", "footer", "file size", "corrupt",
                                   "decompress"))


def _split_rows(md) -> int:
    names = [md.schema.column(c).name for c in range(md.num_columns)]
    if "split" not in names:
        return 0
    c, total = names.index("split"), 0
    for g in range(md.num_row_groups):
        col = md.row_group(g).column(c)
        stats = col.statistics
        if stats is None or not stats.has_null_count:
            return -1
        total += md.row_group(g).num_rows - stats.null_count
    return total


# ---- the cache -----------------------------------------------------------------------------------
def _cache_path(dataset: str, columns: list[str]) -> str:
    key = hashlib.sha1(json.dumps([CACHE_VERSION, dataset.rstrip("/"), sorted(columns)]).encode()).hexdigest()[:20]
    return os.path.join(cache_dir(), "shard-checks", f"{key}.json.gz")


def _load_cache(path: str) -> dict[str, ShardInfo]:
    try:
        with gzip.open(path, "rt") as f:
            return {d["uri"]: ShardInfo(**d) for d in json.load(f)}
    except (OSError, ValueError, TypeError, KeyError):
        return {}


def _save_cache(path: str, infos: list[ShardInfo]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with gzip.open(tmp, "wt") as f:
        json.dump([asdict(i) for i in infos], f)
    os.replace(tmp, path)


#: a read of a shard that fails on the storage (EIO, a timeout, a 503) is tried this often in all, the
#: waits doubling from READ_BACKOFF_S; then it fails the job (one line, exit 1), never a bad shard
READ_ATTEMPTS = 4
READ_BACKOFF_S = 2.0


def retried(fn: Callable[[], object], what: str):
    """``fn()`` with a storage failure retried (``READ_ATTEMPTS``); content errors are not retried."""
    return failures.call_with_retries(fn, attempts=READ_ATTEMPTS, backoff_s=READ_BACKOFF_S, what=what)


def check(dataset: str, columns: list[str], *, threads: int = 64,
          share: Callable[[list, Callable[[list], list]], list] | None = None) -> list[ShardInfo]:
    """Every shard of ``dataset`` with its footer checked (see the module docstring).

    ``share(todo, fn)``: how the footers left to check are split between processes (DDP ranks);
    it returns ``fn`` applied to all of ``todo``. Default: this process checks them all."""
    listing = list_detail(dataset)
    path = _cache_path(dataset, columns)
    cached = _load_cache(path)
    todo = [e for e in listing if (c := cached.get(e[0])) is None or (c.size, c.tag) != (e[1], e[2])]

    def run(items: list) -> list[ShardInfo]:
        if not items:
            return []
        with ThreadPoolExecutor(min(threads, len(items))) as pool:
            return list(pool.map(lambda e: retried(lambda: inspect_footer(*e, columns), f"footer of {e[0]}"), items))

    fresh = {i.uri: i for i in (share(todo, run) if share else run(todo))}
    infos = [fresh.get(uri) or cached[uri] for uri, _, _ in listing]
    if todo:
        log.info("checked %d shard footers of %s (%d cached)", len(todo), dataset, len(listing) - len(todo))
        _save_cache(path, infos)
    return infos


def pieces(infos: list[ShardInfo], piece_bytes: int = PIECE_BYTES) -> list[Piece]:
    """Read units of the good shards: runs of consecutive row groups of one shard of at most
    ``piece_bytes`` (a larger row group is a piece alone); a small shard is one piece."""
    out = []
    for s, info in enumerate(infos):
        sizes = [nbytes for _, nbytes in info.groups]
        first, acc = 0, 0
        for g, nbytes in enumerate(sizes):
            if g > first and acc + nbytes > piece_bytes:
                out.append(Piece(s, first, g - first, False))
                first, acc = g, 0
            acc += nbytes
        if sizes:
            out.append(Piece(s, first, len(sizes) - first, first == 0))
    return out


def read_piece(uri: str, piece: Piece, columns: list[str]):
    """The rows of one piece as a pyarrow Table (a whole small file in one request). A column of
    ``schema.ADDED_COLUMNS`` that a shard from before it lacks comes back as nulls."""
    added = [c for c in columns if c in schema.ADDED_COLUMNS]

    def read(source):
        pf = schema.parquet_file(source)          # not pq.read_table: an abort at exit
        names = set(pf.schema_arrow.names) if added else set(columns)
        wanted = [c for c in columns if c in names or c not in added]
        table = (pf.read(columns=wanted) if piece.whole else
                 pf.read_row_groups(list(range(piece.first, piece.first + piece.count)), columns=wanted))
        return schema.conform(table, columns) if added else table

    if piece.whole:
        fs, path = fsspec.core.url_to_fs(uri)
        return read(fs.cat_file(path))
    with fsspec.open(uri, "rb") as f:
        return read(f)


