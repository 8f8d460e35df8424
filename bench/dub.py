"""End-to-end dubbing throughput of one worker: ``radio.dub.dub_clip`` on a real clip, and where
the time goes (busy seconds per stage; decode + warp, the model and paste-back + encode overlap
in threads, so the stages add up to more than the wall time when the overlap works).

Random weights (timing only): the paper's RADIO at 192² by default (``--model smoke`` for the
narrow CPU test widths, ``--model identity`` for no model at all: the CPU side alone). The clip is ``tests/data/liveportrait_d12.mp4`` (512², 25 fps), cut to
``--seconds``; ``--size 1920x1080`` pads it to 1080p first (written under ``--work``).

    PYTHONPATH=. python bench/dub.py --seconds 2                      # CPU here: short run
    PYTHONPATH=. python bench/dub.py --seconds 20 --batch 64          # GPU: bf16, the worker's cores
    PYTHONPATH=. python bench/dub.py --size 1920x1080 --seconds 4 --references 3
    PYTHONPATH=. python bench/dub.py --model identity --seconds 4     # the CPU side without a model
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "tests" / "data" / "liveportrait_d12.mp4"


def make_clip(work: Path, seconds: float, size: str | None) -> Path:
    dst = work / f"bench_{seconds:g}s_{size or 'native'}.mp4"
    if dst.exists():
        return dst
    vf = []
    if size:
        w, h = (int(x) for x in size.split("x"))
        side = min(w, h)
        vf = ["-vf", f"scale={side}:{side},pad={w}:{h}:{(w - side) // 2}:{(h - side) // 2}"]
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-stream_loop", "-1", "-i", f"file:{CLIP}",
           "-t", str(seconds), *vf, "-c:v", "libx264", "-preset", "fast", "-crf", "18", "-c:a", "aac",
           f"file:{dst}"]
    subprocess.run(cmd, check=True)
    return dst


class _Identity(torch.nn.Module):
    class cfg:
        resolution = 192

    def forward(self, target, reference, mel):
        return target


def build_model(kind: str, device: str):
    import yaml

    from preprocess.config import from_dict
    from radio.model import RADIO, ModelConfig

    torch.manual_seed(0)
    if kind == "identity":  # no model: what the CPU side (decode, track, warp, paste, encode) sustains
        return _Identity()
    if kind == "paper":
        cfg = ModelConfig(resolution=192)
    else:  # the narrow widths of configs/smoke-cpu.yaml
        cfg = from_dict(ModelConfig, yaml.safe_load((ROOT / "configs" / "smoke-cpu.yaml").read_text())["model"])
    return RADIO(cfg).to(device).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", choices=("paper", "smoke", "identity"), default="paper")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--size", help="WxH to pad the clip to (e.g. 1920x1080); default its own 512x512")
    ap.add_argument("--batch", type=int, default=None, help="frames per model call (default 16 CPU, 64 GPU)")
    ap.add_argument("--threads", type=int, default=0, help="paste-back threads (0 = cores)")
    ap.add_argument("--references", type=int, default=1)
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "radio-bench-dub"))
    a = ap.parse_args()

    from preprocess.landmarks import get_backend
    from radio.dub import DubConfig, dub_clip

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    clip = make_clip(work, a.seconds, a.size)
    batch = a.batch or (64 if a.device == "cuda" else 16)
    cfg = DubConfig(batch_size=batch, threads=a.threads, references=a.references, precision=a.precision,
                    length="video")
    model = build_model(a.model, a.device)
    backend = get_backend("dlib")
    if a.device == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"torch {torch.__version__}, device {a.device}"
          + (f" ({torch.cuda.get_device_name()})" if a.device == "cuda" else "")
          + f", {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, model {a.model} "
            f"{model.cfg.resolution}², batch {batch}, references {a.references}, clip {clip.name}")
    outs = [str(work / f"out{k}.mp4") for k in range(a.references)]
    warm = make_clip(work, 0.4, a.size)  # imports, librosa's first mel, the model's first call
    dub_clip(str(warm), str(warm), outs, model, backend, cfg, a.device)
    t0 = time.perf_counter()
    s = dub_clip(str(clip), str(clip), outs, model, backend, cfg, a.device)
    wall = time.perf_counter() - t0
    frames = s["frames"] * a.references
    print(f"end to end: {frames} output frames ({s['frames']} × {a.references} references, "
          f"{s['width']}x{s['height']} @ {s['output_fps']} fps) in {wall:.2f} s = {frames / wall:.1f} frames/s")
    stages = s["seconds_by_stage"]
    busy = sum(stages.values())
    print(f"busy seconds by stage (sum {busy:.2f} s = {busy / wall:.2f}× the wall time):")
    for k, v in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"  {k:14s} {v:7.2f} s  {1000 * v / max(frames, 1):7.2f} ms/frame  {100 * v / wall:5.1f} % of wall")


if __name__ == "__main__":
    main()
