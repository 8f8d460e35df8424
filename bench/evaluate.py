"""Time the evaluation suite per pair: ``PYTHONPATH=. python bench/evaluate.py [--max-frames N] [--device cpu]``.

For each committed test clip (reference) and an x264 crf-35 copy of it (generated, made with
ffmpeg into a temp folder), runs :func:`eval.clip.evaluate_pair` in three settings —

* ``base``:   decode, reference face track, crops, PSNR, MS-SSIM, LMD (no networks);
* ``+lpips``: plus LPIPS;
* ``+sync``:  plus LPIPS and Sync-C/D (second face-track pass on the generated video, SyncNet);

and prints frames/s (wall) and frames per CPU-second of this process (what one uncontended core
gives, ffprobe/ffmpeg child processes excluded), plus wall milliseconds per frame per stage. One
thread (OMP/torch/OpenCV set to 1), so the numbers are per core. LPIPS and SyncNet use SEEDED RANDOM weights: their timing is
real, their scores mean nothing (and are labelled so in the rows). Not part of the tests.

**Memory on long pairs** (``--rss 10,20,40`` seconds, ``--rss 600`` for the 10-minute pair):
for each duration a 1080p pair is generated here (``retalking_face5.mp4`` looped and scaled to
1080×1080, padded to 1920×1080, with its audio, x264 crf 18; the generated side a crf-35 copy), and one worker process
(a fresh Python, as a Beam worker) loads the models (LPIPS and SyncNet with seeded random weights,
``sync.track.min_track`` 20) and scores the pair with :func:`eval.clip.evaluate_pair`. Printed per
duration: frames, seconds, the worker's RSS after loading the models and its peak RSS
(``VmHWM``). Flat peaks across durations show that memory does not grow with length.
``--chunk-frames`` sets ``chunk_frames``; the pair's frame count (25 × seconds) is the in-memory
path (one block: both decoded videos at once — ~6 MB per 1080p frame per video).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch load their thread pools

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
DEFAULT = [DATA / "00015.mp4", DATA / "00086.mp4", DATA / "retalking_face5.mp4"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def random_weights(folder: Path) -> dict:
    import torch

    from eval.metrics import lpips as lp
    from eval.metrics import syncnet as sn

    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in lp.alexnet_features().state_dict().items()}, folder / "alex.pth")
    torch.save({k: v for k, v in sn.SyncNet().state_dict().items() if "num_batches" not in k}, folder / "sync.model")
    return {"alex": folder / "alex.pth", "sync": folder / "sync.model"}


def degraded_copy(src: Path, folder: Path, crf: int = 35) -> Path:
    dst = folder / f"{src.stem}_crf{crf}.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", f"file:{src}", "-c:v", "libx264",
                    "-preset", "ultrafast", "-crf", str(crf), "-pix_fmt", "yuv420p", "-c:a", "copy", f"file:{dst}"],
                   check=True)
    return dst


def settings(w: dict, max_frames: int | None, device: str) -> dict:
    common = [f"device={device}"] + ([f"max_frames={max_frames}"] if max_frames else [])
    lpips = [f"lpips.backbone_uri={w['alex']}", f"lpips.backbone_sha256={_sha(w['alex'])}",
             "lpips.label=random (timing only)"]
    sync = [f"sync.weights_uri={w['sync']}", f"sync.weights_sha256={_sha(w['sync'])}",
            "sync.label=random (timing only)"]
    return {"base": common + ["lpips.enabled=false", "sync.enabled=false"],
            "+lpips": common + lpips + ["sync.enabled=false"],
            "+sync": common + lpips + sync}


def bench(name: str, overrides: list[str], pairs: list[tuple[Path, Path]]) -> dict:
    from eval.clip import evaluate_pair
    from eval.config import EvalConfig
    from eval.models import load_models
    from preprocess import config as config_mod

    cfg = config_mod.load(EvalConfig, None, overrides)
    t = time.perf_counter()
    models = load_models(cfg)
    load_s = time.perf_counter() - t
    evaluate_pair(str(pairs[0][0]), str(pairs[0][1]), cfg, models)  # warm-up
    frames, seconds, cpu, stages, missing = 0, 0.0, 0.0, {}, 0
    for gen, ref in pairs:
        t, c = time.perf_counter(), time.process_time()
        row, _ = evaluate_pair(str(gen), str(ref), cfg, models)
        seconds += time.perf_counter() - t
        cpu += time.process_time() - c
        frames += row["n_frames_compared"]
        missing += bool(row["sync_missing"])
        for k, v in json.loads(row["timings"]).items():
            stages[k] = stages.get(k, 0.0) + v
    fps = frames / seconds
    print(f"{name:7s} {frames:5d} frames {seconds:7.2f} s wall {fps:6.1f} frames/s; {cpu:7.2f} s CPU of this "
          f"process {frames / cpu:6.1f} frames/CPU-s  (models load {load_s:.1f} s"
          + (f", {missing} pair(s) without a Sync track" if missing else "") + ")")
    print("        ms/frame: " + ", ".join(f"{k} {1000 * v / frames:.1f}" for k, v in sorted(stages.items(),
                                                                                     key=lambda kv: -kv[1])))
    return {"frames": frames, "seconds": seconds, "fps": fps, "cpu_seconds": cpu}


def long_pair(seconds: float, folder: Path, size: str = "1080:1080,pad=1920:1080:420:0") -> tuple[Path, Path]:
    """A ``seconds``-long 1080p reference (a test clip looped and scaled) and a crf-35 copy of it."""
    ref = folder / f"long_{seconds:g}s.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-stream_loop", "-1", "-i",
                    f"file:{DATA / 'retalking_face5.mp4'}", "-t", str(seconds), "-vf", f"scale={size}", "-r", "25",
                    "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    f"file:{ref}"], check=True)
    return degraded_copy(ref, folder), ref


def _rss_kib() -> tuple[int, int]:
    """(current VmRSS, peak VmHWM) of this process in KiB. VmHWM, not ru_maxrss: Linux carries
    ru_maxrss across exec, so a worker would report its parent's size (see bench/memory.py)."""
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    return int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])


def worker(gen: str, ref: str, overrides: list[str]) -> None:
    """One evaluation worker: load models, score one pair, print JSON with its RSS."""
    import cv2
    import torch

    from eval.clip import evaluate_pair
    from eval.config import EvalConfig
    from eval.models import load_models
    from preprocess import config as config_mod

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    cfg = config_mod.load(EvalConfig, None, overrides)
    models = load_models(cfg)
    loaded, _ = _rss_kib()
    t = time.perf_counter()
    row, _ = evaluate_pair(gen, ref, cfg, models)
    seconds = time.perf_counter() - t
    _, peak = _rss_kib()
    print(json.dumps({"frames": row["n_frames_compared"], "seconds": seconds, "rss_loaded_mib": loaded / 1024,
                      "rss_peak_mib": peak / 1024, "sync_status": row["sync_status"], "psnr": row["psnr"],
                      "timings": json.loads(row["timings"])}))


def bench_rss(durations: list[float], chunk_frames: int | None, device: str, extra: list[str]) -> list[dict]:
    import sys

    out = []
    with tempfile.TemporaryDirectory(prefix="radio-bench-rss-") as d:
        folder = Path(d)
        w = random_weights(folder)
        overrides = settings(w, None, device)["+sync"] + ["sync.track={min_track: 20}"] + extra
        if chunk_frames:
            overrides.append(f"chunk_frames={chunk_frames}")
        print(f"1080p pairs, 1 thread, device {device}, load average {os.getloadavg()[0]:.2f}, "
              f"chunk_frames {chunk_frames or 'default'}; LPIPS + Sync with seeded random weights")
        for sec in durations:
            gen, ref = long_pair(sec, folder)
            proc = subprocess.run([sys.executable, __file__, "--worker", str(gen), str(ref), *overrides],
                                  capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{sec:6g} s  {r['frames']:6d} frames  {r['seconds']:7.1f} s  RSS after load {r['rss_loaded_mib']:6.0f} MiB"
                  f"  peak {r['rss_peak_mib']:6.0f} MiB  (sync {r['sync_status']})")
            out.append(r)
            gen.unlink(), ref.unlink()
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path, default=DEFAULT, help="reference clips (default: tests/data)")
    ap.add_argument("--max-frames", type=int, default=None, help="frames per pair (default: whole clips)")
    ap.add_argument("--device", default="cpu", help="device for LPIPS/SyncNet (cpu, cuda)")
    ap.add_argument("--only", choices=("base", "+lpips", "+sync"), action="append", help="settings to run")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for every setting, e.g. landmarks.backend_args={fit_boxes: 1}")
    ap.add_argument("--rss", help="comma-separated durations in seconds: peak worker RSS on 1080p pairs")
    ap.add_argument("--chunk-frames", type=int, default=None, help="with --rss: chunk_frames (default: the config's)")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker[0], args.worker[1], args.worker[2:])
    if args.rss:
        bench_rss([float(x) for x in args.rss.split(",")], args.chunk_frames, args.device, args.overrides)
        return
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="radio-bench-eval-") as d:
        folder = Path(d)
        pairs = [(degraded_copy(f, folder), f) for f in args.files]
        w = random_weights(folder)
        print(f"{len(pairs)} pairs (x264 crf-35 copy vs original), 1 thread, device {args.device}, "
              f"load average {os.getloadavg()[0]:.2f}, protocol radio-v1 @ 256, landmarks dlib")
        for name, overrides in settings(w, args.max_frames, args.device).items():
            if not args.only or name in args.only:
                bench(name, overrides + args.overrides, pairs)


if __name__ == "__main__":
    main()
