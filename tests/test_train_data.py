"""The training data path around the stream: no reference or split leakage, footer checks at
start (skip or stop, cached), background chunk loading with parallel reads. Rows are cut from the
real preprocessed clips of ``sample_dataset``."""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from preprocess import catalog, schema, shards
from preprocess.errors import UserError
from preprocess.writer import write_table_atomic
from radio.train.config import FilterConfig
from radio.train.data import DataError, ShardStream, _Pace
from test_train import _cfg, _cut, _real_rows, shard_set  # noqa: F401  (fixture)


def _write(root, name: str, rows: list[dict], metadata=None) -> str:
    return write_table_atomic(shards.rows_uri(str(root), name), rows, schema.SEGMENT_SCHEMA,
                              metadata or schema.file_metadata())


# ---- item 5: references ----------------------------------------------------------------------------
def test_references_never_from_the_target_window_of_the_same_source_across_segments(sample_dataset, tmp_path):
    """Segments of one source that touch or overlap in time (adjacent cuts, a second face track)
    never lend a frame within i-2..i+2 of the target, counted in the source's own frames."""
    real = _real_rows(sample_dataset)[0]
    src, other = "gs://b/one.mp4", "gs://b/two.mp4"
    rows = [_cut(real, 0, 8, clip_id="a", source_uri=src, start_frame=100, speaker_id="s"),
            _cut(real, 8, 8, clip_id="b", source_uri=src, start_frame=108, speaker_id="s"),   # adjacent
            _cut(real, 2, 8, clip_id="c", source_uri=src, start_frame=102, speaker_id="s"),   # overlapping
            _cut(real, 0, 8, clip_id="d", source_uri=other, start_frame=100, speaker_id="s")]
    _write(tmp_path, "one", rows)
    stream = ShardStream(str(tmp_path), _cfg(reference="speaker", samples_per_row=0,
                                             filters=FilterConfig(min_frames=6)), resolution=96)
    loaded = stream.load_chunk([0], 0, 1, False)
    assert [(r.clip_id, r.source, r.start) for r in loaded] == [
        ("a", src, 100), ("b", src, 108), ("c", src, 102), ("d", other, 100)]
    near = Counter()           # same source, other segment, just outside the window: allowed
    for seed in range(40):
        for idx, i, refs in stream.plan_chunk(loaded, np.random.default_rng(seed)):
            at = loaded[idx].start + i
            for p, f in refs:
                gap = abs(loaded[p].start + f - at)
                if loaded[p].source == loaded[idx].source:
                    assert gap > 2, (loaded[idx].clip_id, i, loaded[p].clip_id, f)
                    if p != idx:
                        near[gap] += 1
    assert near[3] > 0 and near[4] > 0          # the rule is the window, not the whole source


# ---- item 5: splits --------------------------------------------------------------------------------
def test_rows_without_a_split_are_refused_when_others_have_one(sample_dataset, tmp_path):
    real = _real_rows(sample_dataset)[0]
    _write(tmp_path, "a", [_cut(real, 0, 16, clip_id="tr", split="train"),
                           _cut(real, 16, 16, clip_id="ev", split="eval")])
    _write(tmp_path, "b", [_cut(real, 32, 16, clip_id="nosplit1", split=None),
                           _cut(real, 48, 16, clip_id="nosplit2", split=None)])
    ds = str(tmp_path)

    def clips(**kw):
        stream = ShardStream(ds, _cfg(**kw), resolution=96)
        return {s["clip_id"] for s in stream.iter_consumer(0, 1, epochs=1)}

    with pytest.raises(DataError, match=r"2 of 4 rows .* have no split while 2 have one \(e\.g\. clip nosplit1 "
                                        r"in .*b\.parquet\): set data\.unsplit") as err:
        clips()
    assert isinstance(err.value, UserError)    # the CLI prints one line and exits 2
    with pytest.raises(DataError, match="2 of 4 rows"):
        clips(unsplit="error")
    assert clips(unsplit="eval") == {"tr"}
    assert clips(unsplit="train") == {"tr", "nosplit1", "nosplit2"}
    assert clips(split="eval", unsplit="eval") == {"ev", "nosplit1", "nosplit2"}
    assert clips(split=None) == {"tr", "ev", "nosplit1", "nosplit2"}


def test_a_corpus_without_any_split_is_training_data(sample_dataset, tmp_path):
    real = _real_rows(sample_dataset)[0]
    _write(tmp_path, "a", [_cut(real, 0, 16, clip_id="x", split=None), _cut(real, 16, 16, clip_id="y", split=None)])
    (info,) = catalog.check(str(tmp_path), ["split"])
    assert (info.split_rows, info.rows) == (0, 2)                          # known from the footer alone
    stream = ShardStream(str(tmp_path), _cfg(), resolution=96)
    assert {s["clip_id"] for s in stream.iter_consumer(0, 1, epochs=1)} == {"x", "y"}
    with pytest.raises(DataError, match="2 of 2 rows"):
        ShardStream(str(tmp_path), _cfg(unsplit="error"), resolution=96)


# ---- item 7: shard checks ----------------------------------------------------------------------------
@pytest.fixture()
def damaged(sample_dataset, tmp_path):
    """Three good shards and three bad ones: cut in half, another schema version, no mel column."""
    real = _real_rows(sample_dataset)[0]
    for s in range(3):
        _write(tmp_path, f"good{s}", [_cut(real, 16 * s, 16, clip_id=f"g{s}")])
    cut = _write(tmp_path, "cut", [_cut(real, 0, 16, clip_id="cut")])
    data = open(cut, "rb").read()
    open(cut, "wb").write(data[: len(data) // 2])
    meta = json.loads(schema.file_metadata()[b"radio"])
    meta["schema_version"] = "radio-dataset/0"
    _write(tmp_path, "oldschema", [_cut(real, 0, 16, clip_id="old")], {b"radio": json.dumps(meta).encode()})
    table = pa.Table.from_pylist([_cut(real, 0, 16, clip_id="nomel")], schema=schema.SEGMENT_SCHEMA)
    table = table.drop_columns(["mel"]).replace_schema_metadata(schema.file_metadata())
    pq.write_table(table, shards.rows_uri(str(tmp_path), "nomel"))
    return str(tmp_path)


def test_bad_shards_are_skipped_with_their_names_or_stop_a_strict_run(damaged, caplog):
    caplog.set_level(logging.WARNING, logger="radio.train.data")
    stream = ShardStream(damaged, _cfg(), resolution=96)
    assert [u.rsplit("/", 1)[1] for u in stream.shards] == ["good0.parquet", "good1.parquet", "good2.parquet"]
    assert "skipping 3 of 6 shards that fail their footer check" in caplog.text
    for name, why in (("cut", "magic bytes"), ("oldschema", "Got radio-dataset/0"), ("nomel", "missing column 'mel'")):
        line = next(r.getMessage() for r in caplog.records if f"bad shard {damaged}/rows/{name}.parquet" in r.getMessage())
        assert why in line, line
    assert {s["clip_id"] for s in stream.iter_consumer(0, 1, epochs=1)} == {"g0", "g1", "g2"}

    with pytest.raises(DataError, match=r"3 of 6 shards of .* fail their footer check \(data\.strict\)") as err:
        ShardStream(damaged, _cfg(strict=True), resolution=96)
    assert all(f"rows/{n}.parquet" in str(err.value) for n in ("cut", "oldschema", "nomel"))


def test_footer_checks_are_cached_per_shard_and_redone_when_a_shard_changes(damaged, monkeypatch, sample_dataset):
    calls = []
    real_inspect = catalog.inspect_footer
    monkeypatch.setattr(catalog, "inspect_footer", lambda uri, *a: calls.append(uri) or real_inspect(uri, *a))
    ShardStream(damaged, _cfg(), resolution=96)
    assert len(calls) == 6
    calls.clear()
    ShardStream(damaged, _cfg(), resolution=96)
    assert calls == []                                   # all six from the cache
    real = _real_rows(sample_dataset)[0]
    _write(damaged, "cut", [_cut(real, 0, 16, clip_id="fixed")])   # the broken file replaced
    stream = ShardStream(damaged, _cfg(), resolution=96)
    assert calls == [f"{damaged}/rows/cut.parquet"] and len(stream.shards) == 4


def test_a_shard_damaged_past_its_footer_is_named_and_skipped(sample_dataset, tmp_path, caplog):
    real = _real_rows(sample_dataset)[0]
    _write(tmp_path, "a", [_cut(real, 0, 16, clip_id="ok")])
    bad = _write(tmp_path, "b", [_cut(real, 0, 16, clip_id="bad")])
    data = bytearray(open(bad, "rb").read())
    data[100:4000] = bytes(3900)                          # page data zeroed, footer intact
    open(bad, "wb").write(bytes(data))
    caplog.set_level(logging.WARNING, logger="radio.train.data")
    stream = ShardStream(str(tmp_path), _cfg(), resolution=96)
    assert len(stream.shards) == 2                        # the footer is fine
    assert {s["clip_id"] for s in stream.iter_consumer(0, 1, epochs=1)} == {"ok"}
    assert "skipping unreadable piece" in caplog.text and bad in caplog.text
    with pytest.raises(DataError, match=f"Unreadable shard {bad}"):
        list(ShardStream(str(tmp_path), _cfg(strict=True), resolution=96).iter_consumer(0, 1, epochs=1))


def test_a_storage_failure_on_a_shard_is_retried_never_a_bad_shard(sample_dataset, tmp_path, monkeypatch, caplog):
    """Every error message names its shard (``…/x.parquet``), and 'parquet' in it made a disk's EIO
    (or a timeout) a damaged shard: skipped for the run, cached as bad until the file changed, and
    mid-run its rows silently lost. A storage failure is now retried, and one that lasts fails the
    run; the shard is never recorded as bad."""
    import errno

    real = _real_rows(sample_dataset)[0]
    for s in range(2):
        _write(tmp_path, f"s{s}", [_cut(real, 16 * s, 16, clip_id=f"c{s}")])
    shard = f"{tmp_path}/rows/s0.parquet"
    eio = OSError(f"Error reading bytes from file. Detail: [errno {errno.EIO}] Input/output error: {shard}")
    assert not catalog.is_content_error(eio) and not catalog.is_content_error(
        OSError(errno.EIO, "Input/output error", shard)) and not catalog.is_content_error(
        OSError(errno.ETIMEDOUT, "timed out", "gs://b/d/rows/part-00001.parquet"))
    assert catalog.is_content_error(OSError("Couldn't deserialize thrift: TProtocolException: Invalid data"))
    assert catalog.is_content_error(OSError(f"Parquet magic bytes not found in footer: {shard}"))
    assert catalog.is_content_error(FileNotFoundError(errno.ENOENT, "No such file or directory", shard))

    monkeypatch.setattr(catalog, "READ_BACKOFF_S", 0.0)
    monkeypatch.setenv("RADIO_CACHE_DIR", str(tmp_path / "cache"))
    real_read, fails = catalog.pq.read_metadata, {"n": 1}

    def flaky(f, *a, **k):
        if fails["n"] > 0 and str(getattr(f, "path", f)).endswith("s0.parquet"):
            fails["n"] -= 1
            raise eio
        return real_read(f, *a, **k)

    monkeypatch.setattr(catalog.pq, "read_metadata", flaky)
    stream = ShardStream(str(tmp_path), _cfg(), resolution=96)       # one EIO at the footer check: retried
    assert len(stream.shards) == 2 and fails["n"] == 0
    monkeypatch.setattr(catalog, "_cache_path", lambda *a: str(tmp_path / "cache2.json.gz"))
    fails["n"] = 99                                                  # a disk that stays broken: the run fails
    with pytest.raises(OSError, match="Input/output error"):
        ShardStream(str(tmp_path), _cfg(), resolution=96)
    fails["n"] = 0
    assert len(ShardStream(str(tmp_path), _cfg(), resolution=96).shards) == 2   # nothing cached as bad

    # mid-run: a piece read that fails once is read again, not skipped
    real_piece, piece_fails = catalog.read_piece, {"n": 1}

    def flaky_piece(uri, *a, **k):
        if piece_fails["n"] > 0:
            piece_fails["n"] -= 1
            raise eio
        return real_piece(uri, *a, **k)

    monkeypatch.setattr(catalog, "read_piece", flaky_piece)
    caplog.set_level(logging.WARNING)
    assert {s["clip_id"] for s in stream.iter_consumer(0, 1, epochs=1)} == {"c0", "c1"}
    assert "skipping unreadable piece" not in caplog.text and piece_fails["n"] == 0


# ---- item 6: background chunk loading ------------------------------------------------------------------
def test_next_chunk_loads_while_the_current_one_is_consumed(shard_set, monkeypatch):
    """Reads take 0.5 s; the 4 pieces of a chunk are read in parallel, and the next chunk is ready
    when the consumer (0.15 s per sample, >= 4 samples per chunk) reaches it: no read stall."""
    real_read = catalog.read_piece
    active, log = [0], []
    lock = threading.Lock()

    def slow_read(uri, piece, columns):
        with lock:
            active[0] += 1
            log.append(active[0])
        time.sleep(0.5)
        with lock:
            active[0] -= 1
        return real_read(uri, piece, columns)

    monkeypatch.setattr(catalog, "read_piece", slow_read)
    stream = ShardStream(shard_set, _cfg(samples_per_row=2, shuffle_shards=4, read_threads=4), resolution=96)
    assert len(stream.pieces) == 5                        # 5 small shards: one piece each
    it = stream.iter_consumer(0, 1, epochs=2)
    t0 = time.perf_counter()
    first = next(it)
    assert time.perf_counter() - t0 < 1.9 and max(log) >= 3   # 4 reads of 0.5 s in parallel, not 2 s
    cum = [4, 5, 9, 10]                                   # pieces read by the end of each chunk
    times, chunks = [], [tuple(first["cursor"][1:3].tolist())]
    for s in it:
        time.sleep(0.15)                                  # the training step
        times.append(time.perf_counter())
        epoch, c = s["cursor"][1:3].tolist()
        chunks.append((epoch, c))
        # bounded memory: reads never run more than one chunk ahead of the consumer
        assert len(log) <= cum[min(2 * epoch + c + 1, 3)]
    waits = np.diff(times) - 0.15
    assert len(set(chunks)) == 4 and len(log) == 10       # 2 epochs x 2 chunks (4 + 1 pieces)
    assert waits.max() < 0.3, waits                       # never a 0.5 s read stall at a chunk boundary


def test_next_chunk_reads_start_one_at_a_time_over_a_long_chunk():
    """10 pieces paced over a 100-sample chunk: only piece 0 starts at once (a burst of 4 MiB reads
    at a chunk's start was its longest batch gap), piece j once floor(j * 7.5) samples are taken;
    over a 2-sample chunk, 4 pieces start 3 at once (the reads could not keep up otherwise)."""
    def started(pace, j, n):
        t = threading.Thread(target=pace.wait, args=(j, n), daemon=True)
        t.start()
        t.join(0.05)
        return not t.is_alive()

    long = _Pace(100)
    assert started(long, 0, 10) and not started(long, 1, 10)
    long.done = 6
    assert not started(long, 1, 10)
    long.done = 7
    assert started(long, 1, 10) and not started(long, 3, 10)
    long.release()
    assert started(long, 9, 10)
    short = _Pace(2)
    assert all(started(short, j, 4) for j in range(3)) and not started(short, 3, 4)
    short.done = 1
    assert started(short, 3, 4)


def test_stream_is_the_same_with_one_or_many_read_threads(shard_set):
    def run(threads):
        stream = ShardStream(shard_set, _cfg(samples_per_row=2, shuffle_shards=3, read_threads=threads),
                             resolution=96)
        return [(s["clip_id"], int(s["center"]), s["ref_frame"].tolist())
                for s in stream.iter_consumer(0, 1, epochs=2)]
    assert run(1) == run(6)


def test_pieces_cut_shards_at_row_groups_up_to_the_piece_size():
    big = catalog.ShardInfo("big", 0, "", rows=5, groups=[(1, 1), (1, 1), (1, 1), (1, 5), (1, 1)])
    small = catalog.ShardInfo("small", 0, "", rows=2, groups=[(1, 1), (1, 1)])
    assert [(p.shard, p.first, p.count, p.whole) for p in catalog.pieces([big, small], piece_bytes=2)] == [
        (0, 0, 2, False), (0, 2, 1, False), (0, 3, 1, False), (0, 4, 1, False), (1, 0, 2, True)]
