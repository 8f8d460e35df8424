"""Compacted datasets: the rows of many small per-source shards packed into few large ones.

``radio preprocess`` writes one Parquet file per source video; 10^6 sources are 10^6 small objects,
slow to list and read on an object store. ``radio compact`` (``pipelines/compact.py`` wires these
functions into Beam) rewrites a dataset as

    DATASET2/
      rows/part-NNNNN-<hash>.parquet     SEGMENT_SCHEMA rows of many sources, row groups of at most
                                         ``row_group_mib`` (the training loader's read unit)
      index/part-NNNNN-<hash>.parquet    clip_id -> shard (file name under rows/), row (0-based)
      rejects/part-NNNNN-<hash>.parquet  the input's reject records, packed the same way
      runs/..., summary.json, ...        every other file and folder of the input, copied as is
      compact.json                       written last: layout, input, sizes and counts

Inputs (sorted by name) are packed greedily into groups of about ``target_shard_mib``; a group's
file name is its position and a hash of its members' names, sizes and change tags (mtime, or the
object's generation / etag), so the same input gives the same names and bytes, an input rewritten
in place (same size: a new split, a repaired file) renames its group; a rerun skips groups whose
index file exists (written after their shard, and only when no input was left out: a group with a
bad input is redone and reported again until it is fixed), and output files of an earlier plan that
the new one lacks are removed. A rows/part-* folder without compact.json is a compaction in progress
or killed: readers refuse it (:func:`check_complete`). Rows keep their schema,
so every reader of per-source datasets (training, inspect) reads compacted ones too.
"""
from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from preprocess import catalog, schema, shards, sources
from preprocess import uri as uri_mod
from preprocess.errors import UserError
from preprocess.writer import AtomicParquetWriter, write_table_atomic

LAYOUT = "radio-compact/1"
INDEX, MARKER, RUN_RECORD = "index", "compact.json", "compact.run.json"
PER_SOURCE = (shards.ROWS, shards.REJECTS, shards.DONE, INDEX, MARKER, RUN_RECORD)   # not copied as is
INDEX_SCHEMA = pa.schema([pa.field("clip_id", pa.string(), nullable=False),
                          pa.field("shard", pa.string(), nullable=False),
                          pa.field("row", pa.int64(), nullable=False)])


class CompactError(UserError, ValueError):
    pass


@dataclass
class CompactConfig:
    target_shard_mib: float = 256.0    # output shard size (inputs are packed up to about this)
    row_group_mib: float = catalog.PIECE_BYTES / 2**20   # read unit of the training loader
    allow_fewer_inputs: bool = False   # recompact an input with fewer row shards than the output was made
                                       # from (their rows leave the output)

    def __post_init__(self):
        if self.target_shard_mib <= 0 or self.row_group_mib <= 0:
            raise ValueError("target_shard_mib and row_group_mib must be > 0.")


@dataclass(frozen=True)
class Group:
    """One output file: its name under rows/ (or rejects/) and its inputs [(uri, size)]."""
    kind: str                    # 'rows' | 'rejects'
    name: str
    inputs: tuple


def check_paths(src: str, dst: str) -> None:
    """User mistakes, before any work: no input rows, output inside the input, a per-source output."""
    if uri_mod.within(dst, src):
        raise CompactError(f"--output must be outside --input. Got {dst!r} for {src!r}.")
    fs, path = fsspec.core.url_to_fs(src)
    if not fs.isdir(f"{path.rstrip('/')}/{shards.ROWS}"):      # cheap: no listing of 10^6 shards here
        raise CompactError(f"No row shards under {src!r} (expected rows/*.parquet written by `radio preprocess`).")
    foreign = [u for u, _, _ in catalog.list_detail(dst) if not u.rsplit("/", 1)[-1].startswith("part-")]
    if foreign:
        raise CompactError(f"{dst!r} holds rows that `radio compact` did not write (e.g. {foreign[0]}): "
                           "use an empty or earlier compact output.")
    for files in metadata_files(src).values():   # copied as is at the end: a name no copy can have fails now
        for _, rel in files:
            try:
                uri_mod.join(dst, rel)
            except uri_mod.UnsafePathError as e:
                raise CompactError(f"{src!r} holds {rel!r}, which cannot be copied under that name ({e}); "
                                   "rename or remove it.") from e


def list_inputs(src: str, kind: str) -> list[tuple[str, int, str]]:
    """(uri, size, change tag) of the input's ``kind`` files."""
    return [(u, size, tag) for u, size, tag in catalog.list_detail(src, kind)]


def plan(inputs: list[tuple], kind: str, target_bytes: float) -> list[Group]:
    """Inputs ``(uri, size[, tag])`` (sorted by name) packed greedily into groups of about
    ``target_bytes``; a group's name hashes its members' names, sizes and tags."""
    groups, members, acc = [], [], 0
    for uri, size, *tag in sorted(inputs):
        members.append((uri, int(size), tag[0] if tag else ""))
        acc += int(size)
        if acc >= target_bytes:
            groups.append(members)
            members, acc = [], 0
    if members:
        groups.append(members)
    out = []
    for i, m in enumerate(groups):
        key = json.dumps([kind, [(u.rsplit("/", 1)[-1], s, t) for u, s, t in m]]).encode()
        out.append(Group(kind, f"part-{i:05d}-{hashlib.sha1(key).hexdigest()[:12]}.parquet",
                         tuple((u, s) for u, s, _ in m)))
    return out


def check_earlier(src: str, dst: str, *, allow_fewer_inputs: bool = False) -> None:
    """Before a compaction into an earlier one's output (which removes the earlier parts the new plan
    lacks): refuse when the earlier one was made from another input, or from more row shards than
    ``src`` now has (compacting usually comes before deleting the per-source shards: recompacting
    after that would remove their rows) unless ``allow_fewer_inputs``. The input is also recorded in
    ``compact.run.json`` at start, so a killed run is checked the same way."""
    earlier = None
    for name in (MARKER, RUN_RECORD):
        if uri_mod.exists(uri_mod.join(dst, name)):
            earlier = json.loads(uri_mod.read_bytes(uri_mod.join(dst, name)))
            break
    if earlier is not None:
        if uri_mod.canonical(str(earlier.get("input", ""))) != uri_mod.canonical(src):
            raise CompactError(f"{dst!r} holds a compaction of {earlier.get('input')!r}, not of {src!r}: "
                               "compacting into it would remove those rows; use another --output.")
        before, now = earlier.get("input_shards"), len(catalog.list_detail(src))
        if before is not None and now < before and not allow_fewer_inputs:
            raise CompactError(f"{src!r} has {now} row shards, {dst!r} was compacted from {before}: the rows of "
                               "the missing ones would leave the output. Restore them, use another --output, "
                               "or --set allow_fewer_inputs=true.")
    write_run_record(dst, src, (earlier or {}).get("input_shards"))


def write_run_record(dst: str, src: str, input_shards: int | None) -> None:
    """``compact.run.json``: the input and how many row shards it had at the last finished run."""
    uri_mod.write_bytes_atomic(uri_mod.join(dst, RUN_RECORD), json.dumps(
        {"input": src, "input_shards": input_shards}, sort_keys=True).encode())


def check_complete(dataset: str, names: list[str]) -> None:
    """A dataset whose rows (``names``) include compacted parts is complete only with compact.json:
    without it a `radio compact` is writing it, or was killed (old and new parts may both be there)."""
    if dataset.endswith(".parquet"):          # one shard named directly: nothing to be complete
        return
    if any(n.rsplit("/", 1)[-1].startswith("part-") for n in names) and not uri_mod.exists(
            uri_mod.join(dataset, MARKER)):
        raise CompactError(f"{dataset!r} holds compacted shards but no {MARKER}: a `radio compact` into it "
                           "is running or was killed. Wait for it, or rerun it to finish the output.")


class _TableWriter(AtomicParquetWriter):
    def write_table(self, table: pa.Table) -> None:
        self._writer.write_table(table.cast(self.schema))
        self.n_rows += table.num_rows


def _read(uri: str) -> pa.Table:
    with fsspec.open(uri, "rb") as f:
        return schema.read_parquet(f)


def write_group(dst: str, group: Group, cfg: CompactConfig) -> dict:
    """Write one output file (and for rows its index); skipped when already committed. Returns
    {kind, name, rows, inputs, skipped, bad: [(uri, why)]}: an input whose footer fails the check
    is left out and named."""
    out = uri_mod.join(dst, group.kind, group.name)
    done = {"kind": group.kind, "name": group.name, "inputs": len(group.inputs), "bad": []}
    marker = uri_mod.join(dst, INDEX, group.name) if group.kind == shards.ROWS else out
    if uri_mod.exists(marker):
        with fsspec.open(marker, "rb") as f:
            return dict(done, rows=pq.read_metadata(f).num_rows, skipped=True)
    rows_kind = group.kind == shards.ROWS
    base = schema.SEGMENT_SCHEMA if rows_kind else schema.REJECT_SCHEMA
    meta = schema.file_metadata({"compacted_from": [u.rsplit("/", 1)[-1] for u, _ in group.inputs]})
    writer = _TableWriter(out, base, meta, temp_prefix=shards.temp_prefix(dst))   # removable once dead
    index, pending, pending_bytes = [], [], 0
    target = cfg.row_group_mib * 2**20

    def flush():
        nonlocal pending, pending_bytes
        if pending:
            writer.write_table(pa.concat_tables(pending))
        pending, pending_bytes = [], 0

    try:
        for uri, size in group.inputs:
            if rows_kind:
                info = catalog.inspect_footer(uri, size, "", list(base.names))
                if info.error:
                    done["bad"].append((uri, info.error))
                    continue
            # rows: a shard from before a column was added gets it as nulls (schema.conform)
            table = schema.conform(_read(uri)).cast(base) if rows_kind else _read(uri).select(base.names).cast(base)
            if rows_kind:
                start = writer.n_rows + sum(t.num_rows for t in pending)
                index += [(c, group.name, start + r) for r, c in enumerate(table.column("clip_id").to_pylist())]
                for r in range(table.num_rows):            # row groups of at most ``target``
                    one = table.slice(r, 1)
                    if pending and pending_bytes + one.nbytes > target:
                        flush()
                    pending.append(one)
                    pending_bytes += one.nbytes
            else:
                pending.append(table)
        flush()
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    if rows_kind and not done["bad"]:   # a group that left an input out is redone by the next run
        write_table_atomic(marker, [{"clip_id": c, "shard": s, "row": r} for c, s, r in index], INDEX_SCHEMA,
                           temp_prefix=shards.temp_prefix(dst))
    return dict(done, rows=writer.n_rows, skipped=False)


def metadata_files(src: str) -> dict[str, list[tuple[str, str]]]:
    """The input's files other than the per-source ones (run summaries, config fingerprint, ...):
    ``{top-level name: [(file path, path relative to the input), ...]}``; hidden ones left out."""
    fs, path = fsspec.core.url_to_fs(src)
    out = {}
    for entry in sorted(fs.ls(path, detail=True), key=lambda e: e["name"]):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if name in PER_SOURCE or name.startswith("."):
            continue
        files = fs.find(entry["name"]) if entry["type"] == "directory" else [entry["name"]]
        rels = [(f, posixpath.relpath(f, path)) for f in files]
        out[name] = [(f, rel) for f, rel in rels if not sources.hidden(rel)]
    return out


def copy_metadata(src: str, dst: str) -> list[str]:
    """Every file and folder of the input other than the per-source ones, copied as is; returns
    their names."""
    fs, _ = fsspec.core.url_to_fs(src)
    listed = metadata_files(src)
    for files in listed.values():
        for f, rel in files:
            uri_mod.write_bytes_atomic(uri_mod.join(dst, rel), fs.cat_file(f))
    return list(listed)


def remove_stale(dst: str, groups: list[str]) -> list[str]:
    """Output files of an earlier plan (part-* not in ``groups``, under rows/, index/, rejects/)."""
    keep = set(groups)
    fs, path = fsspec.core.url_to_fs(dst)
    gone = []
    for sub in (shards.ROWS, INDEX, shards.REJECTS):
        folder = f"{path.rstrip('/')}/{sub}"
        if not fs.isdir(folder):
            continue
        for f in fs.ls(folder, detail=False):
            name = f.rsplit("/", 1)[-1]
            if name.startswith("part-") and f"{sub}/{name}" not in keep:
                uri_mod.remove_file(fs, f)
                gone.append(f"{sub}/{name}")
    return gone


def finish(src: str, dst: str, results: list[dict], cfg: CompactConfig) -> dict:
    """After every group: copy the metadata, drop stale files, write compact.json (last; the
    driver removed the old one before the job started)."""
    results = sorted(results, key=lambda r: (r["kind"], r["name"]))
    names = [f"{r['kind']}/{r['name']}" for r in results]
    names += [f"{INDEX}/{r['name']}" for r in results if r["kind"] == shards.ROWS]
    stale = remove_stale(dst, names)
    copied = copy_metadata(src, dst)
    rows = [r for r in results if r["kind"] == shards.ROWS]
    summary = {
        "layout": LAYOUT, "input": src, "config": {"target_shard_mib": cfg.target_shard_mib,
                                                   "row_group_mib": cfg.row_group_mib},
        "input_shards": sum(r["inputs"] for r in rows),
        "input_reject_files": sum(r["inputs"] for r in results if r["kind"] == shards.REJECTS),
        "shards": len(rows), "rows": sum(r["rows"] for r in rows),
        "reject_files": len(results) - len(rows),
        "rejects": sum(r["rows"] for r in results if r["kind"] == shards.REJECTS),
        "bad_input_shards": sorted([list(b) for r in rows for b in r["bad"]]),
        "copied": copied,
    }
    write_run_record(dst, src, summary["input_shards"])
    uri_mod.write_bytes_atomic(uri_mod.join(dst, MARKER), json.dumps(summary, indent=2, sort_keys=True).encode())
    summary["written"] = sum(not r["skipped"] for r in results)
    summary["removed_stale"] = stale
    return summary


def lookup(dataset: str, clip_ids) -> dict[str, tuple[str, int]]:
    """{clip_id: (shard URI, row)} from a compacted dataset's index."""
    want = set(clip_ids)
    out = {}
    for uri, _, _ in catalog.list_detail(dataset, INDEX):
        for r in _read(uri).to_pylist():
            if r["clip_id"] in want:
                out[r["clip_id"]] = (uri_mod.join(dataset, shards.ROWS, r["shard"]), r["row"])
    return out
