"""Start-up time of ``radio preprocess``: ``PYTHONPATH=. python bench/startup.py``.

Prints (not a test; figures and how they were taken in bench/README.md), for 1 bundled clip and
for the 4 bundled clips, each run a fresh ``python -m radio.cli preprocess`` subprocess on the
local runner with its defaults:

- ``wall``: the subprocess's wall time, interpreter start to exit;
- ``stages``: the run summary's ``seconds_by_stage`` added up (probe, audio, decode, track,
  align, encode, write: the per-source work, summed over workers);
- ``start-up``: ``wall - stages``, everything that is not per-source work (interpreter, imports,
  Beam, worker processes, landmark model load, warm-up, listing, summary);
- ``cpu``: user + system CPU seconds of the whole process tree (Beam's worker processes too):
  on a loaded machine wall times stretch with the load, CPU seconds much less.

``cold`` runs first, with an empty bytecode cache (``PYTHONPYCACHEPREFIX`` set to a new folder,
so every module is compiled as on a first run); with ``--evict`` it also drops the page cache of
the venv and the repo files (``posix_fadvise(DONTNEED)``; other processes on the machine then
re-read those files too). ``warm`` runs ``--repeat`` times after it; min and median are printed.
The load average before each run is printed too: on a shared machine it is the noise.

``--breakdown`` times the pieces in one process: ``import apache_beam``, the landmark backend
load, the warm-up, and one clip's ``run_source``. ``--repo DIR`` runs another checkout's code
(e.g. an older commit unpacked with ``git archive``) for a before/after comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = {"1 clip": ["00015.mp4"],
         "4 clips": ["00015.mp4", "00086.mp4", "liveportrait_d12.mp4", "retalking_face5.mp4"]}

BREAKDOWN = r"""
import json, sys, time
t0 = time.perf_counter()
import apache_beam  # noqa: F401
t1 = time.perf_counter()
from preprocess import config as config_mod, source
cfg = config_mod.load(source.PreprocessConfig, None, [])
backend = source.load_backend(cfg)
t2 = time.perf_counter()
source.warm_up()
t3 = time.perf_counter()
res = source.run_source({"uri": sys.argv[1]}, cfg, backend, sys.argv[2])
t4 = time.perf_counter()
print(json.dumps({"import apache_beam": t1 - t0, "landmark backend load": t2 - t1,
                  "warm_up": t3 - t2, "run_source (1 clip)": t4 - t3,
                  "its stages": sum(res["seconds"].values())}))
"""


def evict(paths: list[Path]) -> int:
    """Drop the page cache of every file under ``paths``; returns the bytes advised away."""
    n = 0
    for root in paths:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                p = os.path.join(dirpath, name)
                try:
                    fd = os.open(p, os.O_RDONLY)
                except OSError:
                    continue
                try:
                    n += os.fstat(fd).st_size
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
    return n


def one_run(repo: Path, inputs: list[Path], work: Path, env: dict) -> dict:
    """One ``radio preprocess`` subprocess; wall, summed stage seconds and the difference."""
    src = work / "in"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for p in inputs:
        os.symlink(p, src / p.name)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()[0]
    cmd = [sys.executable, "-m", "radio.cli", "preprocess", "--input", str(src / "*.mp4"),
           "--output", str(out), "--no-progress", "--run-id", "bench"]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"radio preprocess failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    stages = sum(summary["seconds_by_stage"].values())
    return {"wall": wall, "stages": stages, "startup": wall - stages, "cpu": cpu, "load": load,
            "frames": summary["frames"], "inputs": summary["inputs"]}


def fmt(r: dict) -> str:
    return (f"wall {r['wall']:6.2f} s  stages {r['stages']:5.2f} s  start-up {r['startup']:5.2f} s  cpu {r['cpu']:5.2f} s"
            f"  (load {r['load']:.1f}, {r['inputs']} inputs, {r['frames']} frames)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=REPO, help="checkout whose code runs (default: this one)")
    ap.add_argument("--repeat", type=int, default=3, help="warm runs per case")
    ap.add_argument("--evict", action="store_true", help="cold: also drop the page cache of venv + repo")
    ap.add_argument("--no-cold", action="store_true", help="warm runs only")
    ap.add_argument("--breakdown", action="store_true", help="also time the pieces in one process")
    ap.add_argument("--cases", default=",".join(CASES), help="comma list of: " + ", ".join(CASES))
    args = ap.parse_args()
    repo = args.repo.resolve()
    data = REPO / "tests" / "data"
    base_env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    print(f"repo {repo}, python {sys.executable}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="radio-startup-") as tmp:
        work = Path(tmp)
        for case in args.cases.split(","):
            inputs = [data / name for name in CASES[case]]
            env = dict(base_env, PYTHONPYCACHEPREFIX=str(work / f"pycache-{len(inputs)}"))
            if args.evict:
                venv = Path(sys.prefix)
                gib = evict([venv, repo]) / 2 ** 30
                print(f"{case}: evicted {gib:.2f} GiB of page cache ({venv}, {repo})")
            if not args.no_cold:
                print(f"{case:8s} cold  {fmt(one_run(repo, inputs, work, env))}")
            warm = [one_run(repo, inputs, work, base_env) for _ in range(args.repeat)]
            for r in warm:
                print(f"{case:8s} warm  {fmt(r)}")
            for key in ("wall", "startup", "cpu") if warm else ():
                vals = [r[key] for r in warm]
                print(f"{case:8s} warm  {key}: min {min(vals):.2f} s, median {statistics.median(vals):.2f} s")
        if args.breakdown:
            proc = subprocess.run([sys.executable, "-c", BREAKDOWN, str(data / "00015.mp4"), str(work / "bd")],
                                  cwd=repo, env=base_env, capture_output=True, text=True, check=True)
            for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items():
                print(f"breakdown  {k:24s} {v:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
