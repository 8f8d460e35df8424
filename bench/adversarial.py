"""Peak worker memory on files that declare more than they hold (issue 9, item 4).

``PYTHONPATH=. python bench/adversarial.py [--work DIR] [--only gap_3h,huge_frame,...]``

Makes each file from tests/data/00015.mp4 with ffmpeg (small: stream copies with rewritten
timestamps, or a few frames), then runs ``source.run_source`` on it in a fresh worker process
(landmark backend loaded, as on a Beam worker) and prints that process's peak RSS, the wall
time and the outcome. Before the limits: 2.46 GB on the 3-hour gap, 1.47 GB on 8000×8000.

- ``gap_3h``: 7 s of video and audio, both streams' timestamps jump by 3 h after 3 s (204 KB).
- ``huge_frame``: 8000×8000 H.264, 2 frames, with audio.
- ``video_gap_600s``: the video timestamps jump by 600 s after 3 s; audio continuous.
- ``fps1_1h``: a 1 fps copy looped to one hour, with its audio (90,000 frames at 25 fps).
"""
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if __name__ == "__main__":  # run as a script: the repo's packages, not bench/preprocess.py
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
    sys.path.insert(0, os.path.dirname(_HERE))

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from bench.memory import peak_rss_mib  # noqa: E402

REPO = Path(_HERE).parent
CLIP = REPO / "tests" / "data" / "00015.mp4"  # 224², 25 fps (time base 1/12800), AAC 16 kHz, 6.96 s


def _ffmpeg(*args) -> None:
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {' '.join(cmd)}\n{res.stderr[-2000:]}")


def _jump(stream_ticks_per_s: int, after_s: float, gap_s: float) -> str:
    """``setts`` bitstream filter: timestamps after ``after_s`` move ``gap_s`` later."""
    return f"setts=ts=TS+gt(TS\\,{int(after_s * stream_ticks_per_s)})*{gap_s}/TB"


def make_gap_3h(dst: Path) -> Path:
    _ffmpeg("-i", f"file:{CLIP}", "-c", "copy", "-bsf:v", _jump(12800, 3, 10800),
            "-bsf:a", _jump(16000, 3, 10800), f"file:{dst}")
    return dst


def make_huge_frame(dst: Path, side: int = 8000) -> Path:
    _ffmpeg("-i", f"file:{CLIP}", "-t", "1", "-frames:v", "2", "-vf", f"scale={side}:{side}:flags=neighbor",
            "-c:v", "libx264", "-preset", "ultrafast", "-crf", "40", "-c:a", "copy", f"file:{dst}")
    return dst


def make_huge_sar(dst: Path) -> Path:
    """1024×1024 stored, with 100:1 pixels (ffmpeg's largest): displayed 102400×1024."""
    _ffmpeg("-i", f"file:{CLIP}", "-t", "1", "-frames:v", "2", "-vf", "scale=1024:1024,setsar=100/1",
            "-c:v", "libx264", "-preset", "ultrafast", "-crf", "40", "-c:a", "copy", f"file:{dst}")
    return dst


def make_video_gap_600s(dst: Path) -> Path:
    _ffmpeg("-i", f"file:{CLIP}", "-c", "copy", "-bsf:v", _jump(12800, 3, 600), f"file:{dst}")
    return dst


def make_fps1_1h(dst: Path, seconds: int = 3600) -> Path:
    one = dst.with_name(dst.stem + ".1fps.mp4")
    _ffmpeg("-i", f"file:{CLIP}", "-vf", "fps=1", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "copy",
            f"file:{one}")
    _ffmpeg("-stream_loop", seconds // 7 + 1, "-i", f"file:{one}", "-t", seconds, "-c", "copy", f"file:{dst}")
    one.unlink()
    return dst


MAKERS = {"gap_3h": make_gap_3h, "huge_frame": make_huge_frame, "huge_sar": make_huge_sar,
          "video_gap_600s": make_video_gap_600s, "fps1_1h": make_fps1_1h}


# ---- worker side ----------------------------------------------------------------------------------
def worker_main(argv) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("clip")
    ap.add_argument("dataset")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    a = ap.parse_args(argv)
    from preprocess import config as config_mod
    from preprocess import source

    cfg = config_mod.load(source.PreprocessConfig, None, a.overrides)
    backend = source.load_backend(cfg)
    source.warm_up()
    base = peak_rss_mib()
    t = time.perf_counter()
    result = source.run_source({"uri": os.path.abspath(a.clip)}, cfg, backend, a.dataset)
    out = {"status": result["status"], "reasons": sorted(set(result["reject_reasons"])),
           "frames": result["frames"], "segments": result["segments"], "wall_s": time.perf_counter() - t,
           "baseline_mib": base, "maxrss_mib": peak_rss_mib()}
    print("RESULT " + json.dumps(out))


def run_worker(clip: Path, dataset: Path, overrides=(), timeout: float = 1800) -> dict:
    """``run_source`` on ``clip`` in a fresh process; its outcome, wall time and peak RSS (MiB)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    sets = [x for o in overrides for x in ("--set", o)]
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_worker", str(clip), str(dataset),
                          *sets], capture_output=True, text=True, env=env, timeout=timeout, check=False)
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"worker on {clip} failed (rc {res.returncode}):\n{res.stderr[-3000:]}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", help="folder for the generated files (default: a temporary one)")
    ap.add_argument("--only", default=",".join(MAKERS), help="comma-separated: " + ",".join(MAKERS))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="radio-adversarial-") as tmp:
        work = Path(a.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"{'file':16s} {'size':>9s} {'outcome':34s} {'frames':>6s} {'wall s':>7s} {'peak RSS MiB':>12s} "
              f"{'at start MiB':>12s}")
        for name in a.only.split(","):
            path = work / f"{name}.mp4"
            if not path.exists():
                MAKERS[name](path)
            r = run_worker(path, work / "ds", a.overrides)
            outcome = r["status"] + (": " + ",".join(r["reasons"]) if r["reasons"] else "")
            print(f"{name:16s} {path.stat().st_size / 1024:7.0f} K {outcome:34s} {r['frames']:6d} "
                  f"{r['wall_s']:7.1f} {r['maxrss_mib']:12.0f} {r['baseline_mib']:12.0f}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_worker"]:
        worker_main(sys.argv[2:])
    else:
        main()
