"""``radio inspect``: a PNG contact sheet of a dataset so a person can check shards by eye.

Each row of the sheet is one segment: evenly spaced aligned crops with their 68 landmarks drawn
(eyes green, mouth red, nose tip index 33 yellow, the canonical eye/mouth midpoints as crosses),
and the segment's log-mel spectrogram below, with the frames' positions marked. A legend on top
says what the marks and the ``s=`` (detector score) in each crop's title mean.
"""
from __future__ import annotations

import io
import logging

import fsspec
import numpy as np
from preprocess import schema, shards
from preprocess.errors import UserError

log = logging.getLogger(__name__)

class InspectError(UserError, ValueError):
    """What to show is not in the dataset."""


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
        raise InspectError(f"--clip-id {clip_id!r}: no such segment under {uri}.")
    return out


#: (colour, marker, what): the marks drawn on every crop, in the sheet's legend
MARKS = (("white", "o", "68 landmarks"), ("lime", "o", "eyes (36–47)"), ("red", "o", "mouth (48–67)"),
         ("yellow", "o", "nose tip (33)"), ("cyan", "+", "where alignment puts the eye / mouth centre"))
SCORE_NOTE = ("f = frame index in the segment,  s = score of the face tracker's latest detection "
              "(dlib HOG: above 0 is a face, higher is surer; S3FD: probability).  "
              "White lines on the mel: the frames shown.")


def draw_landmarks(ax, lm: np.ndarray) -> None:
    ax.scatter(lm[:, 0], lm[:, 1], s=1.5, c="white", linewidths=0)
    ax.scatter(lm[36:48, 0], lm[36:48, 1], s=2.5, c="lime", linewidths=0)
    ax.scatter(lm[48:68, 0], lm[48:68, 1], s=2.5, c="red", linewidths=0)
    ax.scatter(lm[33:34, 0], lm[33:34, 1], s=6, c="yellow", linewidths=0)
    for (x, y) in (CANON_EYES, CANON_MOUTH):
        ax.plot([x - 4, x + 4], [y, y], c="cyan", lw=0.5)
        ax.plot([x, x], [y - 4, y + 4], c="cyan", lw=0.5)


def _segment_header(seg: dict, width_in: float) -> str:
    q = (("landmark_jitter", "eye jitter {:.2f} px"), ("crop_shake", "crop shake {:.2f} px"),
         ("face_size", "face {:.0f} px"), ("outside_frac", "{:.0%} of crop outside the frame"),
         ("audio_rms_db", "sound {:.0f} dBFS"))
    parts = [f"{seg['source_uri'].split('/')[-1]}", f"segment {seg['clip_id']}",
             f"start {seg['segment_start_s']:.2f} s", f"{seg['n_frames']} frames"]
    parts += [fmt.format(seg[k]) for k, fmt in q if seg.get(k) is not None]
    line, lines = "", []
    per_line = max(20, int(width_in * 72 / (8 * 0.62)))  # characters of an 8 pt font across the row
    for part in parts:
        if line and len(line) + 3 + len(part) > per_line:
            lines.append(line)
            line = part
        else:
            line = f"{line} · {part}" if line else part
    return "\n".join(lines + [line])


def sheet_figure(segments: list[dict], frames_per_row: int = 8):
    """The contact sheet as a matplotlib Figure: a legend on top, then per segment a header,
    its crops (titled ``f<index> s=<score>``) and its mel. Constrained layout keeps every label
    inside its own segment's band (tests check no text overlaps another or a picture)."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if not segments:
        raise ValueError("Expected at least one segment to draw. Got none.")
    n = len(segments)
    width = max(frames_per_row, 4) * 1.6
    fig = plt.figure(figsize=(width, 0.9 + n * 3.0), dpi=110, layout="constrained")
    top, *bands = fig.subfigures(n + 1, 1, height_ratios=[0.9] + [3.0] * n)
    handles = [Line2D([], [], ls="", marker=m, ms=5 if m == "o" else 7, mew=1.2, mfc=c, mec=c, label=t)
               for c, m, t in MARKS]
    ax = top.add_subplot()
    ax.axis("off")
    ax.legend(handles=handles, loc="upper center", ncol=len(MARKS), fontsize=7, frameon=True,
              facecolor="0.35", edgecolor="0.35", labelcolor="white", handletextpad=0.3, columnspacing=1.2,
              title="marks on the crops", title_fontsize=7)
    ax.text(0.5, 0.05, SCORE_NOTE, ha="center", va="bottom", fontsize=6.5, wrap=True, transform=ax.transAxes)
    for band, seg in zip(bands, segments):
        t = seg["n_frames"]
        idx = np.linspace(0, t - 1, min(frames_per_row, t)).round().astype(int)
        band.suptitle(_segment_header(seg, width), x=0.01, ha="left", fontsize=8, fontweight="bold")
        grid = band.add_gridspec(2, frames_per_row, height_ratios=[1.6, 0.9])
        for c, i in enumerate(idx):
            ax = band.add_subplot(grid[0, c])
            ax.imshow(seg["frames"][i])
            draw_landmarks(ax, seg["landmarks"][i])
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"f{i} s={seg['detector_score'][i]:.2f}", fontsize=6, pad=2)
        ax = band.add_subplot(grid[1, :])
        ax.imshow(seg["mel"].T, origin="lower", aspect="auto", cmap="magma")
        for i in idx:
            ax.axvline(4 * i + 2, c="w", lw=0.4)
        ax.set_yticks([])
        ax.set_ylabel("mel", fontsize=6)
        ax.set_xlabel("mel rows (4 per video frame)", fontsize=6, labelpad=1)
        ax.tick_params(labelsize=5, pad=1)
    return fig


def contact_sheet(segments: list[dict], frames_per_row: int = 8) -> bytes:
    """Render segments to PNG bytes."""
    import matplotlib.pyplot as plt

    fig = sheet_figure(segments, frames_per_row)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def main(args) -> int:
    from preprocess import uri as uri_mod

    segments = load_segments(args.uri, args.rows, args.clip_id)
    png = contact_sheet(segments, args.frames)
    fs, path = fsspec.core.url_to_fs(args.uri)
    out = args.output or (args.uri.rstrip("/") + "/contact_sheet.png" if fs.isdir(path) else _beside_dataset(args.uri))
    uri_mod.write_bytes_atomic(out, png)
    print(f"contact sheet of {len(segments)} segment(s): {out}")
    return 0


def _beside_dataset(shard: str) -> str:
    """Default sheet for one shard: ``<dataset>/contact_sheet-<shard>.png`` when it lies in a
    dataset's rows/ (not among the shards), else next to it."""
    folder, _, name = shard.rpartition("/")
    stem = name[: -len(".parquet")] if name.endswith(".parquet") else name
    if folder.rstrip("/").endswith("/rows") or folder == "rows":
        return f"{folder.rstrip('/')[: -len('rows')] or './'}contact_sheet-{stem}.png"
    return shard + ".png"
