"""Reports of an evaluation run: the paper's Table 1 (Markdown, CSV) and a self-contained HTML page.

**Table 1 layout.** One row per method; per dataset the columns PSNR↑ MS-SSIM↑ LPIPS↓ Sync-C↑
Sync-D↓ LMD↓. A cell is ``mean ± h`` over clips, where ``[mean − h, mean + h]`` is the two-sided
95 % **Student-t** confidence interval of the mean clip score, ``h = t(0.975, n−1)·s/√n`` with
the sample standard deviation ``s`` (ddof 1). The clip is the unit (frames of one clip are
correlated, so frames are never pooled); with n = 1 there is no interval. Sync columns average
only clips with a Sync score (``sync_missing`` clips are counted apart), so their n can be
smaller. Scores from unofficial weights (a fine-tune, or the seeded random networks of tests and
benches) are marked † (LPIPS) or ‡ (Sync-C/D) with their label: they are not the paper's metric.

**HTML.** Counts (inputs = scored + rejected, by reason), the table, per-metric histograms
(matplotlib, one colour per method), the worst clips per metric and a few sample clips with
generated | reference crops, the rejects, and the provenance (protocol, crop size, landmark
backend, weight hashes). Images are inline base64 PNGs: the file stands alone.

``python -m eval.report --output DIR RUN_DIR_OR_METRICS.parquet ...`` rebuilds the table from one
or more complete runs' ``metrics.parquet`` (e.g. one run per method) into DIR; a clip of one
(dataset, method) in two of them is refused (one line naming it and both runs, exit 2), never
counted twice, and so is a run without its summary.json (killed or running). A row of an older
run with a NaN or ±inf clip score is counted as a ``scoring_error`` reject, as a run now writes it.
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import posixpath
import sys

import numpy as np

from eval.aggregate import nonfinite
from eval.metrics import lmd, lpips, msssim, psnr, sync
from preprocess import uri as uri_mod

# metric, label, higher is better (from each metric's METADATA), decimals
METRICS = (("psnr", "PSNR", psnr.METADATA["higher_is_better"], 2),
           ("ms_ssim", "MS-SSIM", msssim.METADATA["higher_is_better"], 4),
           ("lpips", "LPIPS", lpips.METADATA["higher_is_better"], 4),
           ("sync_c", "Sync-C", sync.METADATA["sync_c"]["higher_is_better"], 3),
           ("sync_d", "Sync-D", sync.METADATA["sync_d"]["higher_is_better"], 3),
           ("lmd", "LMD", lmd.METADATA["higher_is_better"], 3))
HIGHER_IS_BETTER = {m: h for m, _, h, _ in METRICS}
CI_LEVEL = 0.95
CI_METHOD = ("two-sided 95 % Student-t interval of the mean clip score: mean ± t(0.975, n−1)·s/√n "
             "(s: sample std, ddof 1; clips are the unit, frames are not pooled)")
UNOFFICIAL_MARK = {"lpips": "†", "sync_c": "‡", "sync_d": "‡"}


MIN_HIST_CLIPS = 5   # fewer clip scores than this: no histogram (the per-clip table shows them)
PER_CLIP_ROWS = 200  # clips listed in the HTML's per-clip table (all of them are in metrics.parquet)
FLAGGED_NOTE = ("frames whose evaluation crop box leaves the frame and is filled by repeating the "
                "border (radio-v1 protocol), or out-of-frame / unstable-radius frames (dinet); they are "
                "scored, not dropped")


def disabled_metrics(rows: list[dict]) -> set[str]:
    """Metrics switched off for every row (``lpips.enabled`` / ``sync.enabled`` false): LPIPS is
    null only when it is off; ``sync_missing`` is null only when Sync is off."""
    if not rows:
        return set()
    out = set()
    if all(r.get("lpips") is None for r in rows):
        out.add("lpips")
    if all(r.get("sync_missing") is None for r in rows):
        out |= {"sync_c", "sync_d"}
    return out


def arrow(higher: bool) -> str:
    return "↑" if higher else "↓"


def _finite(values) -> np.ndarray:
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    return a[np.isfinite(a)]


def mean_ci(values, level: float = CI_LEVEL) -> dict:
    """``{'n', 'mean', 'half', 'low', 'high'}`` of the t interval (None/NaN values dropped)."""
    from scipy import stats

    a = _finite(values)
    n = len(a)
    if n == 0:
        return {"n": 0, "mean": math.nan, "half": math.nan, "low": math.nan, "high": math.nan}
    mean = float(a.mean())
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * a.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return {"n": n, "mean": mean, "half": half, "low": mean - half, "high": mean + half}


def _unofficial(rows: list[dict], metric: str) -> list[str]:
    """Labels of unofficial weights behind ``metric`` in ``rows`` (empty: official or n/a)."""
    if metric == "lpips":
        return sorted({str(r.get("lpips_label")) for r in rows
                       if r.get("lpips") is not None and r.get("lpips_official_weights") is False})
    if metric in ("sync_c", "sync_d"):
        return sorted({str(r.get("sync_label")) for r in rows
                       if r.get(metric) is not None and r.get("sync_official_weights") is False})
    return []


def summary_table(rows: list[dict]) -> list[dict]:
    """Long form: one dict per (dataset, method, metric) with n, mean, CI and ``unofficial``.
    A row with a NaN or ±inf clip score raises (:func:`eval.aggregate.nonfinite`: such a pair is a
    ``scoring_error`` reject, never a scored row left out of one mean)."""
    for r in rows:
        if nonfinite(r):
            raise ValueError(f"Expected finite clip scores. Got {nonfinite(r)} for {r.get('key')!r}: such a pair "
                             "is a scoring_error reject.")
    out = []
    datasets = sorted({r["dataset"] for r in rows})
    methods = sorted({r["method"] for r in rows})
    for d in datasets:
        for m in methods:
            grp = [r for r in rows if r["dataset"] == d and r["method"] == m]
            if not grp:
                continue
            for metric, label, higher, dec in METRICS:
                out.append({"dataset": d, "method": m, "metric": metric, "label": label, "higher_is_better": higher,
                            **mean_ci([r.get(metric) for r in grp]), "unofficial": _unofficial(grp, metric)})
    return out


def _fmt(x: float, dec: int) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{dec}f}"


def _cell(c: dict | None, dec: int, disabled: set[str] = frozenset()) -> str:
    if c is not None and c["metric"] in disabled:
        return "disabled"
    if c is None or c["n"] == 0:
        return "–"
    mark = UNOFFICIAL_MARK.get(c["metric"], "") if c["unofficial"] else ""
    half = "" if not math.isfinite(c["half"]) else f" ± {_fmt(c['half'], dec)}"
    return f"{_fmt(c['mean'], dec)}{half}{mark}"


def _grid(table: list[dict]):
    datasets = sorted({c["dataset"] for c in table})
    methods = sorted({c["method"] for c in table})
    cells = {(c["dataset"], c["method"], c["metric"]): c for c in table}
    return datasets, methods, cells


def footnotes(table: list[dict]) -> list[str]:
    notes = []
    lp = sorted({lab for c in table if c["metric"] == "lpips" for lab in c["unofficial"]})
    sy = sorted({lab for c in table if c["metric"] in ("sync_c", "sync_d") for lab in c["unofficial"]})
    if lp:
        notes.append(f"† LPIPS from unofficial weights ({', '.join(lp)}): not LPIPS v0.1 AlexNet, not comparable.")
    if sy:
        notes.append(f"‡ Sync-C/D from unofficial SyncNet weights ({', '.join(sy)}): not Sync-C/D, not comparable.")
    return notes


def _table(rows: list[dict], summary: dict | None) -> list[dict]:
    """The run's exact table (``summary['table']``, from the combiner) or one from ``rows``."""
    return (summary or {}).get("table") or summary_table(rows)


def table_markdown(rows: list[dict], summary: dict | None = None) -> str:
    table = _table(rows, summary)
    datasets, methods, cells = _grid(table)
    off = disabled_metrics(rows)
    head = ["Method"] + [f"{d} {label}{arrow(h)}" for d in datasets for _, label, h, _ in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        vals = [_cell(cells.get((d, m, metric)), dec, off) for d in datasets for metric, _, _, dec in METRICS]
        lines.append("| " + " | ".join([m] + vals) + " |")
    out = ["# Evaluation summary", ""]
    if summary:
        out += [f"Run `{summary.get('run_id')}`: {summary['inputs']} pairs = {summary['scored']} scored + "
                f"{summary['rejected']} rejected" + _reasons(summary) + unpaired_note(summary)
                + ("" if summary["counts_add_up"] else " (DOES NOT ADD UP)") + ".", ""]
    if not methods:   # a header row over nothing read as a table that lost its rows
        lines = ["**No pair was scored**" + (f" ({summary['rejected']} rejected: reasons above and in "
                                             "rejects.parquet)" if summary and summary.get("rejected") else "")
                 + ": no table."]
    out += lines + [""]
    counts = ["| Dataset | Method | clips scored | Sync missing | frames | padded frames |",
              "|---|---|---|---|---|---|"]
    for g in (summary or {}).get("groups") or results_groups(rows):
        if g["scored"]:
            missing = "disabled" if "sync_c" in off else g["sync_missing"]
            counts.append(f"| {g['dataset']} | {g['method']} | {g['scored']} | {missing} | {g['frames']} | "
                          f"{g.get('padded_frames', 0)} ({_clips(g.get('padded_clips', 0))}) |")
    if len(counts) == 2:
        counts = []
    status = {k: v for k, v in ((summary or {}).get("sync_status") or {}).items() if k not in ("scored", "disabled")}
    if status:
        counts += ["", "Scored without Sync: " + ", ".join(f"{k} {v}" for k, v in sorted(status.items()))
                   + (" (too_short_for_sync: every face track ≤ min_track frames, dropped as syncnet_python does)"
                      if "too_short_for_sync" in status else "") + "."]
    if (summary or {}).get("frame_offset_flagged"):
        counts += ["", f"Scored as paired although shifted in time: {_clips(summary['frame_offset_flagged'])} "
                       f"(frame_offset=record: generated frame t±k matched reference frame t by more than "
                       "frame_offset_db better than t; their scores measure the shift; best_offset per clip in "
                       "metrics.parquet)."]
    if identity_note(summary):
        counts += ["", identity_note(summary)]
    if (summary or {}).get("generated_resized"):
        counts += ["", f"Generated videos resized to the reference's frame size (same aspect ratio): "
                       f"{_clips(summary['generated_resized'])}. Resized with OpenCV frame by frame: bilinear "
                       "(cv2.INTER_LINEAR) when smaller, area averaging (cv2.INTER_AREA) when larger "
                       "(resize_interpolation per clip in metrics.parquet)."]
    out += counts + ["", f"Cells: mean ± half-width of the {CI_METHOD}."] + ([f"Padded frames: {FLAGGED_NOTE}."] if rows else [])
    out += [f"Crop protocol {', '.join(sorted({str(r.get('protocol')) for r in rows}))} at "
            f"{', '.join(sorted({str(r.get('crop_size')) for r in rows}))} px; landmarks "
            f"{', '.join(sorted({str(r.get('landmark_backend')) for r in rows}))}; LMD landmarks: "
            f"{rows[0].get('lmd_landmarks') if rows else '–'}; landmark fitting: "
            f"{', '.join(sorted({str(r.get('landmark_fitting')) for r in rows}))}."] if rows else []
    out += footnotes(table)
    return "\n".join(out) + "\n"


def _clips(n: int) -> str:
    return f"{n} clip" + ("" if n == 1 else "s")


def identity_note(summary: dict | None) -> str | None:
    """The warning about scored pairs whose generated face measured as another person's
    (``identity_check=record``), naming the worst few; None when there is none."""
    n = int((summary or {}).get("identity_flagged") or 0)
    if not n:
        return None
    named = summary.get("identity_flagged_pairs") or []
    multi = len({(p["dataset"], p["method"]) for p in named}) > 1
    names = ", ".join((f"{p['dataset']}/{p['method']}/" if multi else "") + f"{p['key']} "
                      f"({'–' if p.get('identity_distance') is None else format(p['identity_distance'], '.2f')})"
                      for p in named)
    more = f" and {n - len(named)} more" if n > len(named) else ""
    limit = ((summary.get("config") or {}).get("identity_max_distance")
             if isinstance(summary.get("config"), dict) else None)
    above = f"above identity_max_distance {limit:g}" if isinstance(limit, (int, float)) else "above identity_max_distance"
    return (f"Warning: the generated face looks like another person in {_clips(n)}: {names}{more} (dlib face "
            f"descriptor distance to the reference's face {above}; a mispaired file — a folder's names off by "
            "one, a wrong manifest line — drags the means down; identity_distance per clip in metrics.parquet, "
            "--set identity_check=reject makes them rejects).")


def results_groups(rows: list[dict]) -> list[dict]:
    """Per (dataset, method) counts of scored rows (when no run summary is at hand)."""
    from eval import aggregate

    return aggregate.summarise(rows, [], len(rows))["groups"]


def unpaired_note(summary: dict) -> str:
    n = summary.get("unpaired") or 0
    return f" + {n} unpaired (references without a generated clip)" if n else ""


def _reasons(summary: dict) -> str:
    r = summary.get("rejects_by_reason") or {}
    return "" if not r else " (" + ", ".join(f"{k} {v}" for k, v in sorted(r.items())) + ")"


def table_csv(rows: list[dict], summary: dict | None = None) -> str:
    """Wide CSV: one row per method; per dataset × metric the columns mean, ci95 (half-width), n."""
    table = _table(rows, summary)
    datasets, methods, cells = _grid(table)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = [(d, metric) for d in datasets for metric, *_ in METRICS]
    w.writerow(["method"] + [f"{d}/{metric}/{k}" for d, metric in cols for k in ("mean", "ci95", "n", "unofficial")])
    for m in methods:
        line = [m]
        for d, metric in cols:
            c = cells.get((d, m, metric))
            if c is None or c["n"] == 0:
                line += ["", "", 0 if c else "", ""]
            else:
                line += [repr(c["mean"]), "" if not math.isfinite(c["half"]) else repr(c["half"]), c["n"],
                         ";".join(c["unofficial"])]
        w.writerow(line)
    return buf.getvalue()


# ------------------------------------------------------------------------------------ HTML
def _png_b64(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def histograms_png(rows: list[dict]) -> bytes | None:
    """One panel per metric with at least ``MIN_HIST_CLIPS`` clip scores (None when no metric has):
    per bin one bar per method side by side, integer clip counts, at most 5 x ticks with the
    plain decimals (MS-SSIM's narrow ranges stay readable)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    present = [(m, label, h, dec) for m, label, h, dec in METRICS
               if len(_finite(r.get(m) for r in rows)) >= MIN_HIST_CLIPS]
    if not present:
        return None
    groups = sorted({(r["dataset"], r["method"]) for r in rows})
    several_datasets = len({d for d, _ in groups}) > 1
    cols = min(3, len(present))
    nrows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.4 * cols, 3.0 * nrows + 0.3), squeeze=False, layout="constrained")
    for ax, (metric, label, higher, _) in zip(axes.flat, present):
        allv = _finite(r.get(metric) for r in rows)
        lo, hi = float(allv.min()), float(allv.max())
        pad = 0.0 if hi > lo else max(abs(lo) * 1e-3, 1e-3)  # all equal (e.g. identity): one visible bar
        bins = np.linspace(lo - pad, hi + pad, min(21, max(6, len(allv) // 2)))
        values, labels = [], []
        for d, m in groups:
            v = _finite(r.get(metric) for r in rows if r["dataset"] == d and r["method"] == m)
            if len(v):
                values.append(v)
                labels.append(f"{m} ({d})" if several_datasets else m)
        ax.hist(values, bins=bins, label=labels, rwidth=0.9)
        ax.set_title(f"{label} {arrow(higher)}  (n={len(allv)} clips)", fontsize=10)
        ax.set_ylabel("clips", fontsize=9)
        ax.tick_params(labelsize=9)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.ticklabel_format(axis="x", useOffset=False, style="plain")
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    if len(groups) > 1:
        fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside upper center", ncol=min(6, len(groups)),
                   fontsize=9, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}h3{font-size:15px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.ok{color:#1a7f37}.bad{color:#b3261e;font-weight:bold}
.note{font-size:12px;color:#555}.warn{background:#fff4e5;border:1px solid #f0b36b;padding:6px 10px;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #ddd;padding:6px;font-size:12px;max-width:340px}
.card .img{display:block;margin-top:4px;background-repeat:no-repeat}code{font-size:12px}
td.off,.off{color:#777;font-style:italic}td.flag{color:#9a5b00;font-weight:bold}"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x))


def _html_table(rows: list[dict], summary: dict | None = None) -> str:
    table = _table(rows, summary)
    datasets, methods, cells = _grid(table)
    off = disabled_metrics(rows)
    h1 = "<tr><th class=l rowspan=2>Method</th>" + "".join(
        f"<th colspan={len(METRICS)} style='text-align:center'>{_e(d)}</th>" for d in datasets) + "</tr>"
    h2 = "<tr>" + "".join(f"<th>{label}{arrow(h)}</th>" for _ in datasets for _, label, h, _ in METRICS) + "</tr>"
    body = ""
    for m in methods:
        tds = ""
        for d in datasets:
            for metric, _, _, dec in METRICS:
                c = cells.get((d, m, metric))
                n = f"<br><span class=note>n={c['n']}</span>" if c and c["n"] else ""
                text = _cell(c, dec, off)
                tds += f"<td class=off>{text}</td>" if text == "disabled" else f"<td>{_e(text)}{n}</td>"
        body += f"<tr><td class=l>{_e(m)}</td>{tds}</tr>"
    notes = "".join(f"<p class=warn>{_e(n)}</p>" for n in footnotes(table))
    return f"<table>{h1}{h2}{body}</table>{notes}"


def _counts_html(summary: dict, rows: list[dict]) -> str:
    ok = summary["counts_add_up"]
    sync_off = "sync_c" in disabled_metrics(rows)
    padded_frames = sum(g.get("padded_frames", 0) for g in summary.get("groups", []))
    padded_clips = sum(g.get("padded_clips", 0) for g in summary.get("groups", []))
    reasons = "".join(f"<tr><td class=l>&nbsp;&nbsp;{_e(k)}</td><td>{v}</td></tr>"
                      for k, v in sorted((summary.get("rejects_by_reason") or {}).items()))
    groups = "".join(f"<tr><td class=l>{_e(g['dataset'])}</td><td class=l>{_e(g['method'])}</td><td>{g['scored']}</td>"
                     f"<td>{g['rejected']}</td>" + ("<td class=off>disabled</td>" if sync_off else f"<td>{g['sync_missing']}</td>")
                     + "</tr>" for g in summary.get("groups", []))
    return (f"<table><tr><td class=l>pairs listed</td><td>{summary['inputs']}</td></tr>"
            f"<tr><td class=l>scored</td><td>{summary['scored']}</td></tr>"
            f"<tr><td class=l>rejected</td><td>{summary['rejected']}</td></tr>{reasons}"
            f"<tr><td class=l>unpaired (references without a generated clip)</td><td>{summary.get('unpaired', 0)}</td></tr>"
            f"<tr><td class=l>scored + rejected + unpaired = listed</td><td class={'ok' if ok else 'bad'}>"
            f"{'yes' if ok else 'NO'}</td></tr>"
            + ("<tr><td class=l>Sync-C/D</td><td class=off>disabled</td></tr>" if sync_off else
               f"<tr><td class=l>scored without Sync (no track / no audio)</td><td>{summary.get('sync_missing', 0)}</td></tr>"
               f"<tr><td class=l>&nbsp;&nbsp;too_short_for_sync (tracks ≤ min_track frames)</td>"
               f"<td>{summary.get('too_short_for_sync', 0)}</td></tr>")
            + (f"<tr><td class=l>scored as paired although shifted in time (frame_offset=record)</td>"
               f"<td class=bad>{summary['frame_offset_flagged']}</td></tr>"
               if summary.get("frame_offset_flagged") else "")
            + (f"<tr><td class=l>scored although the generated face looks like another person (identity_check=record)"
               f"</td><td class=bad>{summary['identity_flagged']}</td></tr>" if summary.get("identity_flagged") else "")
            + f"<tr><td class=l>frames scored</td><td>{summary.get('frames_scored', 0)}</td></tr>"
            f"<tr><td class=l>padded frames</td><td>{padded_frames} in {padded_clips} of "
            f"{_clips(summary['scored'])}</td></tr>"
            "</table>"
            + (f"<p class=warn>{_e(identity_note(summary))}</p>" if identity_note(summary) else "")
            + (f"<table><tr><th class=l>dataset</th><th class=l>method</th><th>scored</th><th>rejected</th>"
               f"<th>Sync missing</th></tr>{groups}</table>" if groups else ""))


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR."""
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _image_styles(cards: dict) -> str:
    """One CSS class per pair holding its sample PNG: a clip that is among the worst for several
    metrics is embedded once."""
    seen, rules = set(), []
    for c in [c for lst in (cards.get("worst") or {}).values() for c in lst] + list(cards.get("samples") or []):
        if c.get("sample_png") and c["pair_id"] not in seen:
            seen.add(c["pair_id"])
            w, h = _png_size(c["sample_png"])
            rules.append(f".s-{c['pair_id']}{{width:{w}px;height:{h}px;"
                         f"background-image:url({_png_b64(c['sample_png'])})}}")
    return "\n".join(rules)


def _flagged_text(row: dict | None) -> str:
    if not row or row.get("crop_flagged_frames") is None:
        return ""
    return f"{row['crop_flagged_frames']} of {row.get('n_frames')} frames padded"


def _per_clip_html(rows: list[dict]) -> str:
    """Every clip's scores and padded frames (the first PER_CLIP_ROWS by key)."""
    off = disabled_metrics(rows)
    shown = sorted(rows, key=lambda r: (str(r["key"]), str(r["method"]), str(r["dataset"])))
    head = ("<tr><th class=l>key</th><th class=l>method</th><th>frames scored</th><th>padded frames</th>"
            + "".join(f"<th>{label}{arrow(h)}</th>" for m, label, h, _ in METRICS if m not in off) + "</tr>")
    body = ""
    for r in shown[:PER_CLIP_ROWS]:
        f = r.get("crop_flagged_frames")
        body += (f"<tr><td class=l>{_e(r['key'])}</td><td class=l>{_e(r['method'])}</td><td>{_e(r.get('n_frames'))}</td>"
                 f"<td{' class=flag' if f else ''}>{_e('–' if f is None else f)}</td>"
                 + "".join(f"<td>{_fmt(r.get(m), dec)}</td>" for m, _, _, dec in METRICS if m not in off) + "</tr>")
    more = (f"<p class=note>… {len(rows) - PER_CLIP_ROWS} more clips in metrics.parquet</p>"
            if len(rows) > PER_CLIP_ROWS else "")
    return f"<table>{head}{body}</table>{more}<p class=note>Padded frames: {_e(FLAGGED_NOTE)}.</p>"


def _card_html(card: dict, metric: str | None = None, row: dict | None = None) -> str:
    vals = " · ".join(f"{label} {_fmt(card.get(m), dec)}" for m, label, _, dec in METRICS
                      if card.get(m) is not None)
    flagged = _flagged_text(row)
    vals += f" · {flagged}" if flagged else ""
    img = (f"<div class='img s-{_e(card['pair_id'])}' role=img aria-label='generated | reference'></div>"
           if card.get("sample_png") else "")
    head = f"<b>{_e(card['key'])}</b> <span class=note>{_e(card['method'])} / {_e(card['dataset'])}</span>"
    frames = card.get("sample_frames") or []
    return (f"<div class=card>{head}<br>{_e(vals)}<br><span class=note>frames {_e(', '.join(map(str, frames)))}"
            f" — left generated, right reference</span>{img}</div>")


def _provenance(summary: dict, rows: list[dict]) -> str:
    w = summary.get("weights") or {}
    off = disabled_metrics(rows)

    def value(k: str, v: list) -> str:
        metric = "lpips" if k.startswith("lpips") else "sync_c" if k.startswith("sync") else None
        if metric in off and not v:
            return "<span class=off>disabled</span>"
        return f"<code>{_e(', '.join(v) or '–')}</code>"

    items = "".join(f"<tr><td class=l>{_e(k)}</td><td class=l>{value(k, v)}</td></tr>" for k, v in w.items())
    proto = sorted({f"{r.get('protocol')} v{r.get('protocol_version')} @ {r.get('crop_height')}x{r.get('crop_width')}"
                    for r in rows})
    fitting = sorted({str(r.get("landmark_fitting")) for r in rows})
    return (f"<table><tr><td class=l>crop protocol</td><td class=l>{_e(', '.join(proto) or '–')}</td></tr>"
            f"<tr><td class=l>LMD landmarks</td><td class=l>{_e(rows[0].get('lmd_landmarks') if rows else '–')}</td></tr>"
            f"<tr><td class=l>LMD landmark fitting</td><td class=l>{_e(', '.join(fitting) or '–')}</td></tr>"
            f"<tr><td class=l>confidence intervals</td><td class=l>{_e(CI_METHOD)}</td></tr>{items}</table>"
            f"<details><summary class=note>config</summary><pre class=note>"
            f"{_e(json.dumps(summary.get('config'), indent=2, sort_keys=True))}</pre></details>")


def _cards_sections(rows: list[dict], cards: dict) -> list[str]:
    """Worst clips per metric, then sample clips not shown above. When every scored clip is in
    every worst list (a run of a few clips), the clips are shown once, not once per metric."""
    by_pair = {r["pair_id"]: r for r in rows}
    worst = {m: v for m, v in (cards.get("worst") or {}).items() if v}
    shown: set[str] = set()
    parts = []
    if worst and len(rows) > max(len(v) for v in worst.values()):
        parts.append("<h2>Worst clips per metric</h2>")
        for metric, label, higher, _ in METRICS:
            if worst.get(metric):
                parts.append(f"<h3>{label} {arrow(higher)} — {'lowest' if higher else 'highest'} first</h3>")
                parts.append("<div class=cards>" + "".join(_card_html(c, metric, by_pair.get(c["pair_id"]))
                                                           for c in worst[metric]) + "</div>")
                shown |= {c["pair_id"] for c in worst[metric]}
        title = "More sample clips"
    else:  # few clips: every one of them, once
        title = "Clips"
    rest = {c["pair_id"]: c for lst in ([] if shown else worst.values()) for c in lst}
    rest.update({c["pair_id"]: c for c in cards.get("samples") or [] if c["pair_id"] not in shown})
    if rest:
        parts += [f"<h2>{title} <span class=note>(generated | reference)</span></h2>",
                  "<div class=cards>" + "".join(_card_html(c, row=by_pair.get(c["pair_id"]))
                                                for _, c in sorted(rest.items(), key=lambda kv: str(kv[1]["key"])))
                  + "</div>"]
    return parts


def render_html(rows: list[dict], rejects: list[dict], summary: dict, cards: dict | None = None) -> str:
    """The self-contained report page (see the module docstring)."""
    cards = cards or {}
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>radio evaluation {_e(summary.get('run_id'))}"
             f"</title><style>{CSS}\n{_image_styles(cards)}</style></head><body>",
             f"<h1>radio evaluation — run {_e(summary.get('run_id'))}</h1>",
             f"<p class=note>finished {_e(summary.get('finished_utc'))} · generated <code>{_e(summary.get('generated'))}"
             f"</code> · reference <code>{_e(summary.get('reference') or '–')}</code> · output <code>{_e(summary.get('output'))}"
             f"</code></p>", "<h2>Counts</h2>", _counts_html(summary, rows), "<h2>Summary (Table 1 layout)</h2>",
             _html_table(rows, summary) if rows else "<p>No pair was scored.</p>",
             f"<p class=note>Cells: mean ± half-width of the {_e(CI_METHOD)}.</p>"]
    hist = histograms_png(rows) if rows else None
    if hist:
        parts += ["<h2>Distributions of clip scores</h2>", f"<img alt='histograms' src='{_png_b64(hist)}'>"]
    elif rows:
        parts.append(f"<p class=note>No histograms: they are drawn from {MIN_HIST_CLIPS} scored clips on "
                     f"({len(rows)} here); the per-clip scores are below.</p>")
    if rows:
        parts += [f"<h2>Per-clip scores ({len(rows)})</h2>", _per_clip_html(rows)]
    parts += _cards_sections(rows, cards)
    parts.append(f"<h2>Rejects ({len(rejects)})</h2>")
    if rejects:
        shown = rejects[:500]
        parts.append("<table><tr><th class=l>key</th><th class=l>method</th><th class=l>reason</th><th class=l>side</th>"
                     "<th class=l>stage</th><th class=l>message</th></tr>" + "".join(
                         f"<tr><td class=l>{_e(r['key'])}</td><td class=l>{_e(r['method'])}</td><td class=l>"
                         f"{_e(r['reason'])}</td><td class=l>{_e(r['side'])}</td><td class=l>{_e(r['stage'])}</td>"
                         f"<td class=l>{_e(r['message'][:300])}</td></tr>" for r in shown) + "</table>")
        if len(rejects) > len(shown):
            parts.append(f"<p class=note>… {len(rejects) - len(shown)} more in rejects.parquet</p>")
    parts += ["<h2>Provenance</h2>", _provenance(summary, rows), "</body></html>"]
    return "\n".join(parts)


def write_report(out_dir: str, rows: list[dict], rejects: list[dict], summary: dict, cards: dict | None = None) -> dict:
    """Write summary.md, summary.csv and report.html under ``out_dir`` (atomically); return their URIs."""
    files = {"summary_md": uri_mod.join(out_dir, "summary.md"), "summary_csv": uri_mod.join(out_dir, "summary.csv"),
             "report_html": uri_mod.join(out_dir, "report.html")}
    uri_mod.write_bytes_atomic(files["summary_md"], table_markdown(rows, summary).encode())
    uri_mod.write_bytes_atomic(files["summary_csv"], table_csv(rows, summary).encode())
    uri_mod.write_bytes_atomic(files["report_html"], render_html(rows, rejects, summary, cards).encode())
    return files


def _nonfinite_reject(row: dict) -> dict:
    """The ``scoring_error`` reject a run now writes for a pair with a NaN or ±inf clip score
    (older runs wrote it as a scored row)."""
    what = "; ".join(f"{k} {v}" for k, v in nonfinite(row).items())
    return {**{k: row.get(k) for k in ("run_id", "pair_id", "key", "dataset", "method", "generated_uri",
                                       "reference_uri")},
            "reason": "scoring_error", "side": "pair", "stage": "score",
            "message": f"non-finite clip score: {what} (a scored row of an older run, counted as a reject)"}


def _unpaired(summary: dict) -> list[dict]:
    """One ``{dataset, method}`` per unpaired reference of a run's ``summary.json`` (its groups'
    counts; the run's own names when it has none): unpaired pairs have no table rows."""
    groups = [g for g in summary.get("groups") or [] if g.get("unpaired")]
    if groups:
        return [{"dataset": g["dataset"], "method": g["method"]} for g in groups for _ in range(int(g["unpaired"]))]
    return [{"dataset": summary.get("dataset"), "method": summary.get("method")}] * int(summary.get("unpaired") or 0)


def main(argv: list[str] | None = None) -> int:
    """Rebuild the summary table from one or more runs (``metrics.parquet`` files or run folders).
    A clip of one (dataset, method) found in two runs (or a run given twice) is refused, naming it and
    both runs: its scores would count twice; so is an incomplete run (no summary.json); exit 2.
    Unpaired references (no rows) are counted from each run's summary.json."""
    from eval import results

    ap = argparse.ArgumentParser(prog="python -m eval.report", description=main.__doc__)
    ap.add_argument("inputs", nargs="+", help="run folders (OUTPUT/runs/ID) or metrics.parquet URIs")
    ap.add_argument("--output", required=True, help="folder for summary.md, summary.csv, report.html")
    a = ap.parse_args(argv)
    rows, rejects, unpaired, seen, runs = [], [], [], {}, {}
    for i, src in enumerate(a.inputs):
        run = (posixpath.dirname(src.rstrip("/")) or ".") if src.rstrip("/").endswith(".parquet") else src.rstrip("/")
        if not uri_mod.exists(uri_mod.join(run, "summary.json")):   # written last: the run is complete
            print(f"python -m eval.report: error: {run!r} has no summary.json: the run is incomplete (killed, "
                  "or still running); rerun it to the end.", file=sys.stderr)
            return 2
        got = results.read_table(uri_mod.join(run, "metrics.parquet"))
        bad = (results.read_table(uri_mod.join(run, "rejects.parquet"))
               if uri_mod.exists(uri_mod.join(run, "rejects.parquet")) else [])
        for r in got + bad:  # a clip counted twice in one table row would weigh twice in every mean
            j, first = seen.setdefault((r["dataset"], r["method"], r["key"]), (i, src))
            if j != i:
                where = f"{first!r} and {src!r}" if first != src else f"{src!r}, given twice"
                print(f"python -m eval.report: error: clip {r['key']!r} of {r['dataset']} / {r['method']} is in "
                      f"{where}; give each method's run once (for a rerun, only its latest run; two methods "
                      "need two --method names).", file=sys.stderr)
                return 2
        if uri_mod.canonical(run) in runs:  # a run without rows given twice: its unpaired would count twice
            print(f"python -m eval.report: error: run {run!r} is given twice ({runs[uri_mod.canonical(run)]!r} and "
                  f"{src!r}); give each run once.", file=sys.stderr)
            return 2
        runs[uri_mod.canonical(run)] = src
        unpaired += _unpaired(json.loads(uri_mod.read_bytes(uri_mod.join(run, "summary.json"))))
        bad += [_nonfinite_reject(r) for r in got if nonfinite(r)]  # older runs scored them
        rows, rejects = rows + [r for r in got if not nonfinite(r)], rejects + bad
    summary = {"run_id": "+".join(sorted({str(r["run_id"]) for r in rows + rejects})),
               "generated": ", ".join(a.inputs),
               **results.summarise(rows, rejects, len(rows) + len(rejects) + len(unpaired), unpaired)}
    files = write_report(a.output, rows, rejects, summary)
    print(table_markdown(rows, summary))
    print("\n".join(files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
