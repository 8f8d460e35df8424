"""`radio compact`: per-source shards packed into large ones with a clip index; rejects, run
summaries and other metadata carried over; idempotent reruns; training reads both layouts."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import radio.cli
from preprocess import compact, schema, shards
from preprocess.writer import write_table_atomic
from radio.train.config import FilterConfig
from radio.train.data import ShardStream
from test_train import _cfg, _cut, _real_rows


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def per_source(sample_dataset, tmp_path) -> Path:
    """6 per-source shards (2-3 rows of real frames), 2 reject files, run summaries, a fingerprint."""
    real = _real_rows(sample_dataset)
    root = tmp_path / "in"
    for s in range(6):
        rows = [_cut(real[(s + r) % 2], 6 * s + 20 * r, 14, clip_id=f"c{s}{r}", source_uri=f"v{s}.mp4",
                     start_frame=20 * r) for r in range(2 + s % 2)]
        write_table_atomic(shards.rows_uri(str(root), f"src{s}"), rows, schema.SEGMENT_SCHEMA, schema.file_metadata())
        (root / "done").mkdir(exist_ok=True)
        (root / "done" / f"src{s}.json").write_text("{}")
    for s in range(2):
        rej = schema.Reject(f"bad{s}.mp4", "faces", "no_face", "MediaError", "no face found").to_row()
        write_table_atomic(shards.rejects_uri(str(root), f"bad{s}"), [rej], schema.REJECT_SCHEMA, schema.file_metadata())
    (root / "summary.json").write_text(json.dumps({"run_id": "r1", "inputs": 8}))
    (root / "runs" / "r1").mkdir(parents=True)
    (root / "runs" / "r1" / "summary.json").write_text(json.dumps({"run_id": "r1"}))
    (root / "config_fingerprint.json").write_text(json.dumps({"sha256": "abc"}))
    return root


def _pair_target(src: Path) -> str:
    """A target size that packs the 6 input shards two by two (3 output shards)."""
    sizes = [p.stat().st_size for p in sorted((src / "rows").glob("*.parquet"))]
    return f"target_shard_mib={min(a + b for a, b in zip(sizes[::2], sizes[1::2])) / 2**20}"


def _compact(src: Path, dst: Path, *sets: str) -> int:
    args = ["compact", "--input", str(src), "--output", str(dst), "--direct_num_workers=1"]
    for s in sets:
        args += ["--set", s]
    return radio.cli.main(args)


def test_compact_packs_rows_with_an_index_and_carries_everything_else(per_source, tmp_path, capsys):
    dst = tmp_path / "out"
    assert _compact(per_source, dst, _pair_target(per_source), "row_group_mib=0.05") == 0
    assert "15 rows" in capsys.readouterr().out
    meta = json.loads((dst / "compact.json").read_text())
    assert meta["layout"] == compact.LAYOUT and meta["input_shards"] == 6 and meta["rows"] == 15
    assert meta["shards"] == 3 and meta["reject_files"] == 1 and meta["rejects"] == 2
    assert meta["copied"] == ["config_fingerprint.json", "runs", "summary.json"]
    for rel in ("summary.json", "runs/r1/summary.json", "config_fingerprint.json"):
        assert (dst / rel).read_bytes() == (per_source / rel).read_bytes()
    assert not (dst / "done").exists()
    out_shards = sorted((dst / "rows").glob("part-*.parquet"))
    assert len(out_shards) == 3 and all(pq.ParquetFile(p).num_row_groups > 1 for p in out_shards)

    # the index names the shard and row of every clip, and the row is the input's row
    original = {r["clip_id"]: r for r in shards.iter_rows(str(per_source))}
    where = compact.lookup(str(dst), original)
    assert set(where) == set(original)
    for clip, (uri, row) in where.items():
        got = pq.read_table(uri).slice(row, 1).to_pylist()[0]
        assert got == original[clip]
    rejects = [r for u in shards.list_rejects(str(dst)) for r in pq.read_table(u).to_pylist()]
    assert sorted(r["source_uri"] for r in rejects) == ["bad0.mp4", "bad1.mp4"]

    # idempotent: a rerun writes nothing new and leaves the same bytes
    before = _tree(dst)
    assert _compact(per_source, dst, _pair_target(per_source), "row_group_mib=0.05") == 0
    assert _tree(dst) == before


def test_training_reads_both_layouts_alike(per_source, tmp_path):
    dst = tmp_path / "out"
    assert _compact(per_source, dst, "target_shard_mib=1000", "row_group_mib=0.05") == 0
    cfg = _cfg(samples_per_row=0, shuffle_shards=2, piece_mib=0.05, filters=FilterConfig(min_frames=10))
    windows = {}
    for name, ds in (("per_source", per_source), ("compact", dst)):
        stream = ShardStream(str(ds), cfg, resolution=96)
        windows[name] = sorted((s["clip_id"], int(s["center"])) for s in stream.iter_consumer(0, 1, epochs=1))
        if name == "compact":
            assert len(stream.shards) == 1 and len(stream.pieces) > 2     # one file, read in pieces
    assert windows["per_source"] == windows["compact"] and len(windows["compact"]) == 15 * 10


def test_a_changed_input_rewrites_only_what_changed_and_drops_stale_files(per_source, sample_dataset, tmp_path):
    dst = tmp_path / "out"
    sets = (_pair_target(per_source),)
    assert _compact(per_source, dst, *sets) == 0
    first = {p.name for p in (dst / "rows").glob("*.parquet")}
    real = _real_rows(sample_dataset)[0]
    write_table_atomic(shards.rows_uri(str(per_source), "src5"), [_cut(real, 0, 14, clip_id="new")],
                       schema.SEGMENT_SCHEMA, schema.file_metadata())    # 3 rows -> 1: the last group changes
    assert _compact(per_source, dst, *sets) == 0
    second = {p.name for p in (dst / "rows").glob("*.parquet")}
    assert len(first & second) == 2 and len(second - first) == 1 and len(second) == 3
    assert {p.name for p in (dst / "index").glob("*.parquet")} == second
    assert json.loads((dst / "compact.json").read_text())["rows"] == 13
    assert set(compact.lookup(str(dst), ["new", "c50", "c40"])) == {"new", "c40"}


def test_an_input_rewritten_in_place_or_left_out_is_not_forgotten(per_source, sample_dataset, tmp_path, capsys):
    """Group names hashed input names and sizes only: a shard rewritten with the same size (a new
    split) kept its old rows in the compacted copy, and a group that left a bad shard out was
    committed, so a rerun reported nothing and the shard's rows never came back once repaired."""
    import os

    dst = tmp_path / "out"
    sets = (_pair_target(per_source),)
    assert _compact(per_source, dst, *sets) == 0
    src0 = per_source / "rows" / "src0.parquet"
    rows = pq.read_table(src0).to_pylist()
    write_table_atomic(str(src0), [dict(r, split="eval") for r in rows], schema.SEGMENT_SCHEMA,
                       schema.file_metadata())
    st = src0.stat()
    os.utime(src0, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # rewritten later (size may be the same)
    assert _compact(per_source, dst, *sets) == 0
    got = {r["clip_id"]: r["split"] for r in shards.iter_rows(str(dst))}
    assert all(got[r["clip_id"]] == "eval" for r in rows) and len(got) == 15

    good = src0.read_bytes()                 # a shard cut short: left out, reported on every run
    src0.write_bytes(good[:-8] + b"\0" * 8)
    for _ in range(2):
        capsys.readouterr()
        assert _compact(per_source, dst, *sets) == 1
        assert "left out (bad shard)" in capsys.readouterr().out and "src0" in json.dumps(
            json.loads((dst / "compact.json").read_text())["bad_input_shards"])
    src0.write_bytes(good)                   # repaired (same size): its rows come back
    assert _compact(per_source, dst, *sets) == 0
    assert len({r["clip_id"] for r in shards.iter_rows(str(dst))}) == 15
    assert json.loads((dst / "compact.json").read_text())["bad_input_shards"] == []


def test_a_half_written_compact_output_is_refused_and_so_is_preprocess_into_one(per_source, tmp_path, capsys):
    dst = tmp_path / "out"
    assert _compact(per_source, dst, _pair_target(per_source)) == 0
    (dst / "compact.json").unlink()          # what a killed `radio compact` leaves
    smoke = str(Path(__file__).resolve().parents[1] / "configs" / "smoke-cpu.yaml")
    for argv in (["train", "--config", smoke, "--data", str(dst), "--output", str(tmp_path / "run")],
                 ["inspect", str(dst)]):
        assert radio.cli.main(argv) == 2
        assert "compacted shards but no compact.json" in capsys.readouterr().err
    one = sorted((dst / "rows").glob("part-*.parquet"))[0]
    assert radio.cli.main(["inspect", str(one), "--output", str(tmp_path / "one.png")]) == 0   # one shard: fine
    assert radio.cli.main(["inspect", str(one)]) == 0          # by default beside rows/, not among the shards
    assert (dst / f"contact_sheet-{one.stem}.png").exists() and not list((dst / "rows").glob("*.png"))
    clip = Path(__file__).resolve().parent / "data" / "00015.mp4"
    assert radio.cli.main(["preprocess", "--input", str(clip), "--output", str(dst)]) == 2
    assert "is a compacted dataset" in capsys.readouterr().err
    assert not (dst / "done").exists()


def test_compact_removes_what_a_killed_compact_left(per_source, tmp_path, monkeypatch):
    """A killed compact left its $TMPDIR part (the shard being written) and .tmp-* uploads for good:
    its writers now use the output's temporary prefix, which a run clears at start (dead ones only)."""
    import os
    import tempfile

    from preprocess import writer

    dst = tmp_path / "out"
    assert _compact(per_source, dst, _pair_target(per_source)) == 0
    dead = Path(tempfile.gettempdir()) / f"{shards.temp_prefix(str(dst))}killed"
    dead.mkdir()
    (dead / "part.parquet").write_bytes(b"x" * 1000)
    os.utime(dead, (1e9, 1e9))
    upload = dst / "rows" / ".tmp-0f-part-00000.parquet"
    upload.write_bytes(b"x")
    used = []
    real = writer.AtomicParquetWriter.__init__

    def spy(self, dest, schema_, metadata=None, compression="zstd", temp_prefix=writer.TEMP_PREFIX):
        used.append(temp_prefix)
        real(self, dest, schema_, metadata, compression, temp_prefix)

    monkeypatch.setattr(writer.AtomicParquetWriter, "__init__", spy)
    (dst / "index" / sorted(p.name for p in (dst / "index").iterdir())[0]).unlink()   # one group to redo
    assert _compact(per_source, dst, _pair_target(per_source)) == 0
    assert not dead.exists() and not upload.exists()
    assert used and all(u == shards.temp_prefix(str(dst)) for u in used)


def test_compact_never_removes_an_earlier_compaction_of_another_or_larger_input(per_source, tmp_path, capsys):
    """Compacting into an earlier output removes the earlier parts the new plan lacks: another input
    (or the same one after its per-source shards were deleted) silently took rows away."""
    import shutil

    dst = tmp_path / "out"
    assert _compact(per_source, dst, _pair_target(per_source)) == 0
    before = _tree(dst)
    other = tmp_path / "other"
    shutil.copytree(per_source, other)
    (other / "rows" / "src0.parquet").unlink()
    assert _compact(other, dst, _pair_target(per_source)) == 2
    assert "holds a compaction of" in capsys.readouterr().err
    (per_source / "rows" / "src0.parquet").unlink()          # the input lost a shard since
    assert _compact(per_source, dst, _pair_target(per_source)) == 2
    err = capsys.readouterr().err
    assert "has 5 row shards" in err and "allow_fewer_inputs" in err
    assert _tree(dst) == before                               # untouched
    assert _compact(per_source, dst, _pair_target(per_source), "allow_fewer_inputs=true") == 0
    assert json.loads((dst / "compact.json").read_text())["input_shards"] == 5


def test_bad_beam_options_leave_a_finished_output_as_it_was(per_source, tmp_path, capsys):
    """A --runner typo (or Dataflow without its options) was refused only after compact.json was
    removed: the finished dataset became 'a compaction running or killed' that training refuses."""
    dst = tmp_path / "out"
    assert _compact(per_source, dst) == 0
    before = _tree(dst)
    for bad in (["--runner", "DataflowRunner"], ["--runner", "NoSuchRunner"]):
        args = ["compact", "--input", str(per_source), "--output", str(dst), *bad]
        assert radio.cli.main(args) == 2, bad
        assert _tree(dst) == before
    fresh = tmp_path / "fresh"
    assert radio.cli.main(["compact", "--input", str(per_source), "--output", str(fresh),
                           "--runner", "DataflowRunner"]) == 2
    assert not fresh.exists()
    capsys.readouterr()


def test_compact_refuses_an_output_inside_its_input_or_a_per_source_output(per_source, capsys):
    assert _compact(per_source, per_source / "sub") == 2
    err = capsys.readouterr().err
    assert "is --input" in err and "or inside it" in err
    other = per_source.parent / "other"
    write_table_atomic(shards.rows_uri(str(other), "x"), [], schema.SEGMENT_SCHEMA, schema.file_metadata())
    assert _compact(per_source, other) == 2
    assert "did not write" in capsys.readouterr().err
