"""Preprocessing throughput and memory: ``PYTHONPATH=. python bench/preprocess.py [--quick]``.

Prints (not a test; see bench/README.md for figures and how they were taken):

1. ``single``: per clip, one worker process pinned to one core (``sched_setaffinity``; ffmpeg
   children inherit it): end-to-end ``run_source`` frames/s (probe, audio, decode, track, align,
   encode, write), beside decode-only frames/s of the same clip, and beside a baseline that runs
   dlib's HOG detector at full resolution + the 68-point predictor on every decoded frame.
   Clips: the bundled tests/data clips and a 1080p clip made from liveportrait_d12 (in --work).
2. ``scaling``: ``radio preprocess`` over 8 clip copies with 1 and with 2 local workers (wall time
   including worker start-up, and with the start-up of an empty run subtracted).
3. ``rss``: peak RSS of one worker preprocessing a 1-minute and a 10-minute 1080p video (the
   1080p clip looped with ``-stream_loop``, stream copy).

4. ``profile`` (only when named in ``--only``): cProfile of one warm ``run_source`` on the 512² clip.

``--only single,scaling,rss,profile`` picks sections; ``--quick`` shortens everything (smoke run).
"""
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if __name__ == "preprocess":
    # A script in bench/ (``python bench/decode.py``) has bench/ first on sys.path, so its
    # ``import preprocess`` finds this file: hand that import over to the real package.
    import importlib

    _saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
    del sys.modules["preprocess"]
    sys.modules["preprocess"] = importlib.import_module("preprocess")
    sys.path[:] = _saved
elif __name__ == "__main__":  # run as a script: the repo's packages, not this file, are `preprocess`
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
    sys.path.insert(0, os.path.dirname(_HERE))

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.memory import peak_rss_mib  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
CLIPS = ["00015.mp4", "00086.mp4", "liveportrait_d12.mp4", "retalking_face5.mp4"]


def ffmpeg(*args) -> None:
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)]
    subprocess.run(cmd, check=True)


def make_media(work: Path, long_minutes: float, short_minutes: float) -> dict[str, Path]:
    """1080p clip from liveportrait_d12 (512² scaled to 1080², padded to 1920×1080), and loops."""
    work.mkdir(parents=True, exist_ok=True)
    out = {"1080p": work / "lp_1080p.mp4"}
    if not out["1080p"].exists():
        ffmpeg("-i", f"file:{DATA / 'liveportrait_d12.mp4'}", "-vf", "scale=1080:1080,pad=1920:1080:420:0",
               "-c:v", "libx264", "-preset", "fast", "-crf", "20", "-pix_fmt", "yuv420p", "-c:a", "aac",
               f"file:{out['1080p']}")
    for key, minutes in (("short", short_minutes), ("long", long_minutes)):
        p = work / f"lp_1080p_{minutes:g}min.mp4"
        if not p.exists():
            ffmpeg("-stream_loop", "-1", "-i", f"file:{out['1080p']}", "-t", minutes * 60, "-c", "copy",
                   f"file:{p}")
        out[key] = p
    return out


# ---- worker side (runs in a pinned subprocess) ------------------------------------------------
def _pin(cpu: int | None) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    import cv2

    cv2.setNumThreads(1)


def worker_e2e(clip: str, dataset: str, repeat: int = 1, overrides=()) -> dict:
    """Best of ``repeat`` warm runs of ``run_source`` (backend loaded and librosa warm, as in a
    Beam worker after ``setup``)."""
    from preprocess import config as config_mod
    from preprocess import source

    cfg = config_mod.load(source.PreprocessConfig, None, list(overrides))
    backend = source.load_backend(cfg)
    source.warm_up()
    wall = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        res = source.run_source({"uri": os.path.abspath(clip)}, cfg, backend, dataset)
        wall = min(wall, time.perf_counter() - t)
    from preprocess import media

    info = media.probe(clip)
    return {"frames_total": info.n_frames_25, "frames_rows": res["frames"], "wall": wall,
            "fps": info.n_frames_25 / wall, "stages": res["seconds"], "status": res["status"],
            "size": f"{info.width}x{info.height}"}


def worker_decode(clip: str, repeat: int = 1) -> dict:
    """Decoding alone, as ``run_source`` decodes (25 fps CFR RGB chunks, its default backend)."""
    from preprocess import source, video

    dec = source.DecodeConfig()
    wall = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        n = sum(len(c) for c in video.iter_frames(clip, chunk=dec.chunk, backend=dec.backend))
        wall = min(wall, time.perf_counter() - t)
    return {"frames": n, "wall": wall, "fps": n / wall}


def worker_baseline(clip: str, max_frames: int) -> dict:
    """Decode + dlib HOG on the full-resolution frame + predictor on the largest face, every frame."""
    import dlib

    from preprocess import video
    from preprocess.landmarks.dlib_backend import packaged_predictor_path

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(packaged_predictor_path())
    n = faces = 0
    t = time.perf_counter()
    for chunk in video.iter_frames(clip):
        for frame in chunk:
            dets = detector(frame, 0)
            if len(dets):
                predictor(frame, max(dets, key=lambda r: r.area()))
                faces += 1
            n += 1
            if n >= max_frames:
                break
        if n >= max_frames:
            break
    wall = time.perf_counter() - t
    return {"frames": n, "faces": faces, "wall": wall, "fps": n / wall}


def worker_profile(clip: str, dataset: str, overrides=(), top: int = 12) -> dict:
    """cProfile of one warm ``run_source`` (the ffmpeg decoder is a separate process: its time
    shows as pipe reads)."""
    import cProfile
    import io
    import pstats

    from preprocess import config as config_mod
    from preprocess import source

    cfg = config_mod.load(source.PreprocessConfig, None, list(overrides))
    backend = source.load_backend(cfg)
    source.warm_up()
    item = {"uri": os.path.abspath(clip)}
    source.run_source(item, cfg, backend, dataset)
    prof = cProfile.Profile()
    prof.runcall(source.run_source, item, cfg, backend, dataset)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return {"profile": buf.getvalue()}


def worker_main(argv) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("task", choices=["e2e", "decode", "baseline", "profile"])
    ap.add_argument("clip")
    ap.add_argument("--cpu", type=int)
    ap.add_argument("--dataset")
    ap.add_argument("--max-frames", type=int, default=10**9)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    a = ap.parse_args(argv)
    _pin(a.cpu)
    if a.task == "e2e":
        out = worker_e2e(a.clip, a.dataset, a.repeat, a.overrides)
    elif a.task == "decode":
        out = worker_decode(a.clip, a.repeat)
    elif a.task == "profile":
        out = worker_profile(a.clip, a.dataset, a.overrides)
    else:
        out = worker_baseline(a.clip, a.max_frames)
    # peak RSS of this process (ffmpeg children are separate processes, a few tens of MiB)
    out["maxrss_mib"] = peak_rss_mib()
    print("RESULT " + json.dumps(out))


def run_worker(*args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_worker", *map(str, args)],
                         capture_output=True, text=True, env=env, check=False)
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"worker {args} failed:\n{res.stderr[-3000:]}")


# ---- sections -----------------------------------------------------------------------------------
def section_single(clips: list[Path], tmp: Path, baseline_frames: int, repeat: int, overrides) -> None:
    print(f"\n## single core (one worker pinned to CPU 0; best of {repeat}){' ' + ' '.join(overrides) if overrides else ''}")
    print(f"{'clip':28s} {'size':>9s} {'frames':>6s} {'e2e f/s':>8s} {'decode f/s':>10s} "
          f"{'baseline f/s':>12s} {'e2e/base':>8s}  stage seconds")
    sets = [x for o in overrides for x in ("--set", o)]
    for clip in clips:
        e2e = run_worker("e2e", clip, "--cpu", 0, "--dataset", tmp / "ds_single", "--repeat", repeat, *sets)
        dec = run_worker("decode", clip, "--cpu", 0, "--repeat", repeat)
        base = run_worker("baseline", clip, "--cpu", 0, "--max-frames", baseline_frames)
        stages = " ".join(f"{k}={v:.2f}" for k, v in e2e["stages"].items())
        print(f"{clip.name:28s} {e2e['size']:>9s} {e2e['frames_total']:6d} {e2e['fps']:8.1f} {dec['fps']:10.1f} "
              f"{base['fps']:12.1f} {e2e['fps'] / base['fps']:7.1f}x  {stages}", flush=True)


def _pipeline(inputs: str, dataset: Path, workers: int) -> tuple[float, dict]:
    shutil.rmtree(dataset, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "radio.cli", "preprocess", "--input", inputs, "--output", str(dataset),
           "--no-progress", f"--direct_num_workers={workers}", "--run-id", f"w{workers}"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    wall = time.perf_counter() - t
    return wall, json.loads((dataset / "summary.json").read_text())


def section_scaling(tmp: Path, copies: int, seconds: float | None) -> None:
    print(f"\n## scaling: `radio preprocess` over {copies} clips, 1 vs 2 local workers "
          f"({os.cpu_count()} cores)")
    src, empty = tmp / "scaling_in", tmp / "scaling_empty"
    for d in (src, empty):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    for i in range(copies):
        clip = DATA / CLIPS[i % len(CLIPS)]
        dst = src / f"{i:02d}_{clip.name}"
        if seconds:
            ffmpeg("-i", f"file:{clip}", "-t", seconds, "-c", "copy", f"file:{dst}")
        else:
            shutil.copyfile(clip, dst)
        (empty / f"{i:02d}.mp4").write_bytes(b"")  # rejected at once: measures start-up only
    fps = {}
    for w in (1, 2):
        overhead, _ = _pipeline(str(empty), tmp / "ds_empty", w)
        wall, s = _pipeline(str(src), tmp / "ds_scaling", w)
        fps[w] = (s["frames"] / wall, s["frames"] / max(wall - overhead, 1e-6))
        print(f"workers={w}: {s['frames']} frames in {wall:.1f} s (start-up {overhead:.1f} s): "
              f"{fps[w][0]:.1f} frames/s wall, {fps[w][1]:.1f} frames/s without start-up", flush=True)
    print(f"scaling 2 vs 1 workers: {fps[2][0] / fps[1][0]:.2f}x wall, {fps[2][1] / fps[1][1]:.2f}x without start-up")


def section_rss(media: dict[str, Path], tmp: Path) -> None:
    print("\n## peak RSS of one worker (1080p, looped)")
    for key in ("short", "long"):
        r = run_worker("e2e", media[key], "--cpu", 0, "--dataset", tmp / "ds_rss")
        print(f"{media[key].name}: {r['frames_total']} frames in {r['wall']:.0f} s ({r['fps']:.1f} f/s), "
              f"worker peak RSS {r['maxrss_mib']:.0f} MiB, {r['frames_rows']} frames in rows", flush=True)


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_worker":
        return worker_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "radio-bench",
                    help="folder for generated media and datasets (default: $TMPDIR/radio-bench)")
    ap.add_argument("--only", default="single,scaling,rss")
    ap.add_argument("--quick", action="store_true", help="short clips and loops (smoke run)")
    ap.add_argument("--baseline-frames", type=int, default=100, help="frames the full-res baseline runs on")
    ap.add_argument("--long-minutes", type=float, default=10.0)
    ap.add_argument("--short-minutes", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3, help="single-core runs per clip (best is shown)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="preprocess config override for the single-core section, e.g. "
                         "faces.backend_args={fit_boxes: 5}")
    a = ap.parse_args(argv)
    if a.quick:
        a.long_minutes, a.short_minutes, a.baseline_frames, a.repeat = 0.5, 0.1, 25, 1
    only = set(a.only.split(","))
    media = make_media(a.work, a.long_minutes, a.short_minutes)
    print(f"radio preprocess bench: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, "
          f"work dir {a.work}")
    if "single" in only:
        section_single([DATA / c for c in CLIPS] + [media["1080p"]], a.work, a.baseline_frames, a.repeat,
                       a.overrides)
    if "scaling" in only:
        section_scaling(a.work, 8, 2.0 if a.quick else None)
    if "rss" in only:
        section_rss(media, a.work)
    if "profile" in only:
        clip = DATA / "liveportrait_d12.mp4"
        print(f"\n## cProfile of run_source on {clip.name} (one core)")
        sets = [x for o in a.overrides for x in ("--set", o)]
        print(run_worker("profile", clip, "--cpu", 0, "--dataset", a.work / "ds_profile", *sets)["profile"])


if __name__ == "__main__":
    main()
