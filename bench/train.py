"""Time RADIO training steps: ``PYTHONPATH=. python bench/train.py [--resolution 96 192] [--device cpu]``.

Runs the production step (``radio.train.trainer.train_step``: G forward, D loss, lazy R1 on its
schedule, L1 + VGG19 perceptual + adversarial + sync losses, both Adam steps, EMA) on random
weights and synthetic uint8 frames, so it needs no dataset and no weight files: VGG19 and S are
randomly initialised (same cost as trained ones). Prints it/s, s/step, windows/s and frames/s, and
peak memory (CUDA: ``torch.cuda.max_memory_allocated``; CPU: max RSS).

Batch = windows per step; each window is T=5 target frames (+5 references, 5 mel windows), so
``--batch 16`` is 80 generated frames per step. Device defaults: CUDA: batch 16, 3 warmup and 10
timed steps, bf16 autocast; CPU: batch 1, 1 warmup and 3 timed steps, fp32.
``--data DATASET`` also times the shard reader (decode + resize) on a real dataset.
``--ladder`` times the plain step, then each speed switch of ``TrainConfig.speed`` added in turn
(issue 14: channels_last, fold_blur, fused_act, R1 on one frame per window in bf16, torch.compile),
one line per rung, at each resolution (``--ladder-to RUNG`` stops early; R1 timed on the plain,
R1 and last rungs). Not part of the tests.
"""
from __future__ import annotations

import argparse
import copy
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from radio.losses import VGG19Features, freeze  # noqa: E402
from radio.model import RADIO, Discriminator, SyncNet  # noqa: E402
from radio.train import dist, guard, speed  # noqa: E402
from radio.train.build import Models, Optimizers  # noqa: E402
from radio.train.config import load_train_config  # noqa: E402
from radio.train.trainer import train_step  # noqa: E402


def synthetic_batches(batch: int, frames: int, res: int, device: torch.device):
    """Endless identical batches of random uint8 frames and model-range mel (pinned when CUDA)."""
    g = torch.Generator().manual_seed(0)
    b = {"target": torch.randint(0, 256, (batch, frames, 3, res, res), dtype=torch.uint8, generator=g),
         "reference": torch.randint(0, 256, (batch, frames, 3, res, res), dtype=torch.uint8, generator=g),
         "mel": (torch.randn(batch, frames, 20, 80, generator=g) * 2).clamp(-4, 4)}
    if device.type == "cuda":
        b = {k: v.pin_memory() for k, v in b.items()}
    while True:
        yield b


def build(cfg, device, vgg: bool, sync: bool) -> tuple[Models, Optimizers]:
    g = RADIO(cfg.model).to(device)
    d = Discriminator(cfg.model).to(device)
    models = Models(g, g, freeze(copy.deepcopy(g)), d,
                    freeze(VGG19Features()).to(device) if vgg else None,
                    freeze(SyncNet(cfg.model)).to(device) if sync else None)
    speed.apply(models, cfg.speed)
    o = cfg.optim
    return models, Optimizers(guard.adam(g.parameters(), lr=o.lr, betas=o.betas, device=device),   # as training:
                              guard.adam(d.parameters(), lr=o.lr, betas=o.betas, device=device))  # fused


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Speed switches added one by one (each rung keeps the ones before it): (name, sets, time R1). The
# first R1 step of a rung builds/tunes the double-backward kernels (~40 s at 192² on an H200, cuDNN
# benchmark), so R1 is timed only where it tells something new: the plain step, the R1 lever and
# the last rung; the others print plain steps only (what their lever changes).
LADDER = (
    ("plain", [], True),
    ("+channels_last", ["speed.channels_last=true"], False),
    ("+fold_blur", ["speed.fold_blur=true"], False),
    ("+fused_act", ["speed.fused_act=true"], False),
    ("+r1 1 frame/window bf16", ["speed.r1_frames=1", "speed.r1_amp=true"], True),
    ("+compile", ["speed.compile=true"], True),
)


def bench_ladder(args, res: int, device: torch.device) -> None:
    names = [n for n, _, _ in LADDER]
    last = names.index(args.ladder_to) if args.ladder_to else len(LADDER) - 1
    sets: list[str] = []
    t0 = time.perf_counter()
    for i, (name, extra, r1) in enumerate(LADDER[:last + 1]):
        sets = sets + extra
        print(f"== {res}x{res} {name}  (t+{time.perf_counter() - t0:.0f} s)")
        try:
            bench_step(args, res, device, extra_sets=sets, r1=r1 or i == last)
        except Exception as e:   # a rung that fails (e.g. compile on an old driver) must not hide the rest
            print(f"  failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        if device.type == "cuda":
            torch.cuda.empty_cache()


def bench_step(args, res: int, device: torch.device, extra_sets: list[str] = (), r1: bool = True) -> None:
    over = [f"model.resolution={res}", f"run.batch={args.batch}", "run.accumulate=1",
            f"loss.perceptual={1.0 if args.vgg else 0.0}", f"loss.sync={0.03 if args.sync else 0.0}"]
    cfg = load_train_config(args.config, over + list(args.set) + list(extra_sets))
    torch.manual_seed(0)
    models, opts = build(cfg, device, cfg.loss.perceptual > 0, cfg.loss.sync > 0)
    amp = torch.bfloat16 if args.amp == "bf16" else None
    batches = synthetic_batches(args.batch, cfg.data.frames, res, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step, times = 0, []
    for i in range(args.warmup + args.steps):
        _sync(device)
        t = time.perf_counter()
        logs, _ = train_step(models, opts, cfg, batches, step + 1, device, amp)   # step+1: R1 only if scheduled
        _sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
        step += 1
    # steps with the lazy R1 pass (every r1_every steps in training): the first one is a warmup
    # (the double-backward kernels are built/tuned then: ~40 s at 192² on an H200), time the second
    r1_times = []
    for _ in range(2 if r1 else 0):
        _sync(device)
        t = time.perf_counter()
        logs, _ = train_step(models, opts, cfg, batches, 0, device, amp)
        _sync(device)
        r1_times.append(time.perf_counter() - t)
    s = sum(times) / len(times)
    every = max(cfg.loss.r1_every, 1)
    mem = (f"peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB allocated "
           f"({torch.cuda.max_memory_reserved(device) / 2**30:.2f} GiB reserved)" if device.type == "cuda"
           else f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    n_g = sum(p.numel() for p in models.generator.parameters()) / 1e6
    n_d = sum(p.numel() for p in models.disc.parameters()) / 1e6
    print(f"{res}x{res} batch {args.batch} windows x {cfg.data.frames} frames = {args.batch * cfg.data.frames} "
          f"frames/step | {device.type} amp {args.amp} | G {n_g:.1f}M D {n_d:.1f}M | vgg {models.vgg is not None} "
          f"sync {models.sync is not None}")
    print(f"  {1 / s:.3f} it/s  {s:.3f} s/step  {args.batch / s:.1f} windows/s  "
          f"{args.batch * cfg.data.frames / s:.1f} frames/s  (mean of {len(times)} after {args.warmup} warmup; "
          f"min {min(times):.3f} max {max(times):.3f})")
    if r1:
        avg = (s * (every - 1) + r1_times[-1]) / every if cfg.loss.r1_every else s
        r1_text = (f"R1 step {r1_times[-1]:.3f} s (first, cold: {r1_times[0]:.3f} s); with R1 every {every} steps: "
                   f"{avg:.3f} s/step average = {1 / avg:.3f} it/s")
    else:
        r1_text = "R1 not timed on this rung"
    print(f"  {r1_text} | {mem} | losses {' '.join(f'{k} {float(v):.3f}' for k, v in logs.items())}")
    sys.stdout.flush()


def bench_data(args, res: int) -> None:
    from radio.train.data import ShardStream

    cfg = load_train_config(args.config, list(args.set))
    stream = ShardStream(args.data, cfg.data, resolution=res)
    it = stream.iter_consumer(0, 1)
    next(it)
    t, n = time.perf_counter(), 0
    for _ in range(args.data_samples):
        next(it)
        n += 1
    dt = time.perf_counter() - t
    print(f"data {args.data} at {res}: {n / dt:.1f} windows/s per consumer ({dt / n * 1000:.1f} ms/window, "
          f"decode + resize of {2 * cfg.data.frames} frames each)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--config", default=str(ROOT / "configs" / "paper-192.yaml"), help="model widths etc.")
    p.add_argument("--resolution", type=int, nargs="+", default=[96, 192])
    p.add_argument("--batch", type=int, help="windows per step (default: 16 on CUDA, 1 on CPU)")
    p.add_argument("--steps", type=int, help="timed steps (default: 10 on CUDA, 3 on CPU)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: 3 on CUDA, 1 on CPU)")
    p.add_argument("--amp", choices=["bf16", "off"], help="default: bf16 on CUDA, off on CPU")
    p.add_argument("--no-vgg", dest="vgg", action="store_false", help="without the perceptual loss")
    p.add_argument("--no-sync", dest="sync", action="store_false", help="without the sync loss")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--ladder", action="store_true", help="plain step, then each speed switch added in turn")
    p.add_argument("--ladder-to", choices=[n for n, _, _ in LADDER], help="stop the ladder after this rung")
    p.add_argument("--data", help="also time reading a real dataset")
    p.add_argument("--data-samples", type=int, default=20)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.batch = args.batch or (16 if cuda else 1)
    args.steps = args.steps or (10 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    args.amp = args.amp or ("bf16" if cuda else "off")
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    else:
        print(f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads")
    assert not dist.active()
    failed = 0
    for res in args.resolution:
        try:
            bench_ladder(args, res, device) if args.ladder else bench_step(args, res, device)
        except torch.cuda.OutOfMemoryError as e:
            failed = 1
            print(f"{res}x{res} batch {args.batch}: CUDA out of memory ({str(e).splitlines()[0]}); "
                  f"peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB. Try --batch {args.batch // 2}.")
            torch.cuda.empty_cache()
        if args.data:
            bench_data(args, res)
    return failed


if __name__ == "__main__":
    sys.exit(main())
