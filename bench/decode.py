"""Time 25 fps decoding per backend: ``PYTHONPATH=. python bench/decode.py [FILE ...] [--max-side N]``.

Prints frames, seconds and frames/s for each file and backend (pyav, decord, ffmpeg, auto), plus the
audio load + log-mel time. Defaults to the committed test clips. Not part of the tests.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from preprocess import audio, video
from preprocess.media import MediaError, probe

DEFAULT = sorted((Path(__file__).resolve().parents[1] / "tests" / "data").glob("*.mp4"))


def bench(path: Path, max_side, chunk: int, repeat: int) -> None:
    info = probe(path)
    print(f"{path.name}: {info.width}x{info.height} {info.video_codec}/{info.pix_fmt} "
          f"{info.fps:.3f} fps vfr={info.is_vfr} rot={info.rotation} -> {info.n_frames_25} frames, "
          f"decord {'can' if video.choose_backend(info, max_side) == 'decord' else 'cannot'} read it; auto = "
          f"{'ffmpeg (' + str(info.color_transfer or info.color_primaries) + ': zscale)' if info.wide_colour else 'pyav'}")
    for backend in ("pyav", "decord", "ffmpeg", "auto"):
        best, n = float("inf"), 0
        try:
            for _ in range(repeat):
                t = time.perf_counter()
                n = sum(len(b) for b in video.iter_frames(path, info, chunk=chunk, backend=backend,
                                                          max_side=max_side))
                best = min(best, time.perf_counter() - t)
        except MediaError as e:
            print(f"  {backend:7s} failed: {e}")
            continue
        print(f"  {backend:7s} {n:6d} frames {best:7.3f} s {n / best:8.1f} frames/s")
    if info.has_audio:
        t = time.perf_counter()
        mel = audio.log_mel(audio.load_audio(path, info=info))
        print(f"  audio+mel {mel.shape} {time.perf_counter() - t:.3f} s")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("files", nargs="*", type=Path, default=DEFAULT)
    ap.add_argument("--max-side", type=int, default=None)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    for f in args.files:
        bench(f, args.max_side, args.chunk, args.repeat)


if __name__ == "__main__":
    main()
