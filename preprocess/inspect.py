"""``radio inspect``: a PNG contact sheet of a dataset so a person can check shards by eye.

Each row of the sheet is one segment: evenly spaced aligned crops with their 68 landmarks drawn
(eyes green, mouth red, nose tip index 33 yellow, the canonical eye/mouth midpoints as crosses),
and the segment's log-mel spectrogram below, with the frames' positions marked.
"""
from __future__ import annotations

import io
import logging

import fsspec
import numpy as np
from preprocess import schema, shards

log = logging.getLogger(__name__)

CANON_EYES = (96.0, 91.0)
CANON_MOUTH = (96.0, 142.0)


def load_segments(uri: str, n: int, clip_id: str | None = None) -> list[dict]:
    out = []
    for shard in shards.list_shards(uri):
        for row in shards.read_shard(shard).to_pylist():
            if clip_id and row["clip_id"] != clip_id:
                continue
            out.append(schema.decode_segment(row))
            if len(out) >= n:
                return out
    if clip_id and not out:
        raise ValueError(f"clip_id {clip_id!r} not found under {uri}")
    return out


def draw_landmarks(ax, lm: np.ndarray) -> None:
    ax.scatter(lm[:, 0], lm[:, 1], s=1.5, c="white", linewidths=0)
    ax.scatter(lm[36:48, 0], lm[36:48, 1], s=2.5, c="lime", linewidths=0)
    ax.scatter(lm[48:68, 0], lm[48:68, 1], s=2.5, c="red", linewidths=0)
    ax.scatter(lm[33:34, 0], lm[33:34, 1], s=6, c="yellow", linewidths=0)
    for (x, y) in (CANON_EYES, CANON_MOUTH):
        ax.plot([x - 4, x + 4], [y, y], c="cyan", lw=0.5)
        ax.plot([x, x], [y - 4, y + 4], c="cyan", lw=0.5)


def contact_sheet(segments: list[dict], frames_per_row: int = 8) -> bytes:
    """Render segments to PNG bytes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not segments:
        raise ValueError("Expected at least one segment to draw. Got none.")
    n = len(segments)
    fig = plt.figure(figsize=(frames_per_row * 1.6, n * 2.6), dpi=110)
    grid = fig.add_gridspec(n * 2, frames_per_row, height_ratios=[1.6, 0.9] * n, hspace=0.6, wspace=0.04)
    for r, seg in enumerate(segments):
        t = seg["n_frames"]
        idx = np.linspace(0, t - 1, min(frames_per_row, t)).round().astype(int)
        for c, i in enumerate(idx):
            ax = fig.add_subplot(grid[2 * r, c])
            ax.imshow(seg["frames"][i])
            draw_landmarks(ax, seg["landmarks"][i])
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"f{i} s={seg['detector_score'][i]:.2f}", fontsize=6)
        ax = fig.add_subplot(grid[2 * r + 1, :])
        ax.imshow(seg["mel"].T, origin="lower", aspect="auto", cmap="magma")
        for i in idx:
            ax.axvline(4 * i + 2, c="w", lw=0.4)
        ax.set_yticks([])
        ax.set_xlabel("mel rows (4 per video frame)", fontsize=6)
        ax.tick_params(labelsize=5)
        q = {k: seg.get(k) for k in ("landmark_jitter", "crop_shake", "face_size")}
        ax.set_title(f"{seg['clip_id']}  {seg['source_uri'].split('/')[-1]}  start {seg['segment_start_s']:.2f}s  "
                     f"{t} frames  " + "  ".join(f"{k}={v:.2f}" for k, v in q.items() if v is not None),
                     fontsize=7, loc="left")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def main(args) -> int:
    from preprocess import uri as uri_mod

    segments = load_segments(args.uri, args.rows, args.clip_id)
    png = contact_sheet(segments, args.frames)
    fs, path = fsspec.core.url_to_fs(args.uri)
    out = args.output or (args.uri.rstrip("/") + "/contact_sheet.png" if fs.isdir(path) else args.uri + ".png")
    uri_mod.write_bytes_atomic(out, png)
    print(f"contact sheet of {len(segments)} segment(s): {out}")
    return 0
