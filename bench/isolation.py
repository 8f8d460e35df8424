"""What running sources in a child process costs: ``PYTHONPATH=. python bench/isolation.py [--n 4]``.

``worker.isolate`` (the default) runs each source's work in a child process that holds the
landmark backend (``preprocess.worker``), so a child killed by the kernel is retried instead of
ending the job. Prints (not a test; figures in bench/README.md, "i9a"):

1. the child's start: a fresh interpreter, imports, backend load, warm-up (once per worker, and
   once more after each kill);
2. per source: the same 2 s clip through ``run_source`` in this process and through the child
   (wall, mean of ``--n``), and the difference: the round trip's cost;
3. the alternative not taken: ``os.fork()`` + exit + wait of a process holding the backend (what a
   fork per source would add before any work; unsafe beside CUDA, OpenMP or gRPC threads).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from preprocess import config as config_mod
from preprocess import source
from preprocess.worker import SourceWorker

CLIP = Path(__file__).resolve().parents[1] / "tests" / "data" / "00015.mp4"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-isolation-"))
    clip = work / "clip.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", f"file:{CLIP}", "-t", "2",
                    "-c", "copy", f"file:{clip}"], check=True)
    cfg = source.PreprocessConfig()
    cfg_dict = config_mod.to_dict(cfg)
    item = {"uri": str(clip)}

    starts = []
    for _ in range(2):
        w = SourceWorker(cfg_dict, str(work / "ds_child"))
        t0 = time.perf_counter()
        w.start()
        starts.append(time.perf_counter() - t0)
        if _ == 0:
            w.close()
    print(f"child start (interpreter + imports + dlib + warm-up): {', '.join(f'{s:.2f}' for s in starts)} s")

    backend = source.load_backend(cfg)
    source.warm_up()
    source.run_source(item, cfg, backend, str(work / "ds_in"))  # warm
    w.run(item)

    def both(it: dict, n: int) -> tuple[list[float], list[float]]:
        """Seconds of ``n`` alternating runs of ``it``: in this process, and in the child."""
        inproc, child = [], []
        for _ in range(n):
            for times, run in ((inproc, lambda: source.run_source(it, cfg, backend, str(work / "ds_in"))),
                               (child, lambda: w.run(it))):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
        return inproc, child

    inproc, child = both(item, args.n)
    a, b = statistics.mean(inproc), statistics.mean(child)
    print(f"per source (2 s clip, mean of {args.n}): in-process {a * 1000:.0f} ms, child {b * 1000:.0f} ms, "
          f"difference {1000 * (b - a):+.0f} ms (min {1000 * min(inproc):.0f} / {1000 * min(child):.0f} ms)")
    # a source that is rejected at once (missing file): the same work both ways, so the
    # difference is the round trip (pickling the item and the result, two pipe hops)
    fast_in, fast_child = both({"uri": str(work / "missing.mp4")}, 20)
    w.close()
    a, b = statistics.median(fast_in), statistics.median(fast_child)
    print(f"per source (rejected at once, median of 20): in-process {a * 1000:.1f} ms, child {b * 1000:.1f} ms, "
          f"round trip {1000 * (b - a):+.1f} ms")

    forks = []
    for _ in range(20):
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        forks.append(time.perf_counter() - t0)
    rss = int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) // 1024
    print(f"fork + exit + wait with the backend loaded (RSS {rss} MiB): "
          f"median {1000 * statistics.median(forks):.1f} ms")


if __name__ == "__main__":
    main()
