"""Pictures that explain themselves: the contact sheet (`radio inspect`) and the evaluation report.

Checked on the rendered figure/HTML, no browser needed (scripts/screenshot_report.sh makes the
screenshots a person looks at)."""
from __future__ import annotations

import io
import itertools

import numpy as np
import pytest

from preprocess import inspect


def _segments(n: int, t: int = 40, name: str = "clip.mp4") -> list[dict]:
    rng = np.random.default_rng(0)
    theta = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    lm = np.stack([96 + 50 * np.cos(theta), 110 + 60 * np.sin(theta)], -1).astype(np.float32)
    return [{"frames": rng.integers(0, 255, (t, 192, 192, 3), dtype=np.uint8),
             "landmarks": np.repeat(lm[None], t, 0), "detector_score": np.linspace(0.4, 2.5, t),
             "mel": rng.normal(-2, 1, (4 * t, 80)).astype(np.float32), "n_frames": t,
             "clip_id": f"{k:016x}", "source_uri": f"/data/speaker_{k}/{name}", "segment_start_s": 10.0 * k,
             "landmark_jitter": 0.61, "crop_shake": 0.73, "face_size": 211.3, "outside_frac": 0.27}
            for k in range(n)]


def _overlaps(fig) -> list[tuple[str, str]]:
    """Pairs (text, text-or-picture) whose drawn boxes overlap by more than 1 px²."""
    from matplotlib.image import AxesImage
    from matplotlib.text import Text

    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    undrawn = set()  # tick labels of ticks outside the view: matplotlib keeps but does not draw them
    for ax in fig.axes:
        for axis, (lo, hi) in ((ax.xaxis, sorted(ax.get_xlim())), (ax.yaxis, sorted(ax.get_ylim()))):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo - 1e-12 <= tick.get_loc() <= hi + 1e-12:
                    undrawn |= {id(tick.label1), id(tick.label2)}
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in undrawn]
    boxes = [(repr(t.get_text()), t.get_window_extent(r)) for t in texts]
    pictures = [(f"picture in {ax.get_title()!r}", ax.get_window_extent(r))
                for ax in fig.findobj(lambda a: hasattr(a, "get_images") and a.get_images())
                if any(isinstance(i, AxesImage) for i in ax.get_images())]

    def area(a, b) -> float:
        w = min(a.x1, b.x1) - max(a.x0, b.x0)
        h = min(a.y1, b.y1) - max(a.y0, b.y0)
        return max(w, 0) * max(h, 0)

    bad = [(n1, n2) for (n1, b1), (n2, b2) in itertools.combinations(boxes, 2) if area(b1, b2) > 1]
    bad += [(n1, n2) for n1, b1 in boxes for n2, b2 in pictures if area(b1, b2) > 1]
    return bad


@pytest.mark.parametrize("n, per_row", [(4, 8), (2, 3)])
def test_contact_sheet_labels_never_overprint(n, per_row):
    import matplotlib.pyplot as plt

    fig = inspect.sheet_figure(_segments(n, name="a_rather_long_source_file_name_from_a_corpus.mp4"), per_row)
    try:
        assert _overlaps(fig) == []
    finally:
        plt.close(fig)


def test_contact_sheet_has_a_legend_for_marks_and_scores():
    import matplotlib.pyplot as plt
    from matplotlib.legend import Legend

    segs = _segments(2)
    fig = inspect.sheet_figure(segs, 4)
    try:
        legends = fig.findobj(Legend)
        assert len(legends) == 1
        labels = [t.get_text() for t in legends[0].get_texts()]
        assert labels == [m[2] for m in inspect.MARKS]
        colours = {c for c, _, _ in inspect.MARKS}
        assert colours == {"white", "lime", "red", "yellow", "cyan"}  # the colours draw_landmarks uses
        texts = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
        assert any("s = score of the face tracker's latest detection" in t for t in texts)
        titles = [t for t in texts if t.startswith("f") and " s=" in t]
        assert len(titles) == 2 * 4 and "f0 s=0.40" in titles
        headers = [t for t in texts if t.startswith("clip.mp4")]
        assert len(headers) == 2 and "27% of crop outside the frame" in headers[0]
    finally:
        plt.close(fig)
    png = inspect.contact_sheet(segs, 4)
    from PIL import Image

    assert Image.open(io.BytesIO(png)).size[0] > 600


# ------------------------------------------------------------------------------ evaluation report
def _demo():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "report_demo.py"
    spec = importlib.util.spec_from_file_location("report_demo", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _html(rows: list[dict], rejects=()) -> str:
    from eval import report, results

    summary = {"run_id": "r", **results.summarise(rows, list(rejects), len(rows) + len(rejects))}
    return report.render_html(rows, list(rejects), summary, {})


def test_report_of_few_clips_has_no_histogram_but_every_clip_with_its_padded_frames():
    from eval import report

    rows = _demo().demo_rows(4, lpips=False, sync=False)
    rows[2]["crop_flagged_frames"] = 17
    assert report.histograms_png(rows) is None
    html = _html(rows)
    assert "alt='histograms'" not in html and f"drawn from {report.MIN_HIST_CLIPS} scored clips on (4 here)" in html
    assert "<h2>Per-clip scores (4)</h2>" in html
    for r in rows:
        assert f"<td class=l>{r['key']}</td>" in html
    assert "<td class=flag>17</td>" in html
    flagged = sum(r["crop_flagged_frames"] for r in rows)
    assert f"{flagged} in {sum(1 for r in rows if r['crop_flagged_frames'])} of 4 clips" in html
    md = report.table_markdown(rows)
    assert "| padded frames |" in md and f"| {flagged} ({sum(1 for r in rows if r['crop_flagged_frames'])} clip" in md
    five = _demo().demo_rows(5, lpips=False, sync=False)
    assert report.histograms_png(five) is not None and "alt='histograms'" in _html(five)


def test_switched_off_metrics_say_disabled_not_missing():
    from eval import report

    off = _demo().demo_rows(6, lpips=False, sync=False)
    assert report.disabled_metrics(off) == {"lpips", "sync_c", "sync_d"}
    html, md = _html(off), report.table_markdown(off)
    assert html.count("<td class=off>disabled</td>") == 3 + 1 + 1  # Table 1 cells, Sync counts, the group's
    assert "scored without Sync" not in html and "Sync-C/D</td><td class=off>disabled" in html
    assert "| disabled | disabled | disabled |" in md and "| 6 | disabled |" in md
    on = _demo().demo_rows(6, lpips=True, sync=True)
    for r in on[:2]:  # Sync on, but not computable for two clips: that is "missing", not "disabled"
        r.update(sync_c=None, sync_d=None, sync_missing=True, sync_missing_reason="no face track")
    assert report.disabled_metrics(on) == set()
    html = _html(on)
    assert "disabled" not in html and "scored without Sync (no track / no audio)</td><td>2</td>" in html


def test_report_histogram_ticks_are_few_and_plain():
    """MS-SSIM's narrow range: at most 5 x ticks per panel, no offset text, integer clip counts."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from eval import report

    rows = _demo().demo_rows(8, methods=("a", "b"))
    for k, r in enumerate(rows):
        r["ms_ssim"] = 0.98731 + 1e-5 * k
    real_close = plt.close
    captured = []
    plt.close = lambda fig=None: captured.append(fig)  # keep the figure to inspect it
    try:
        assert report.histograms_png(rows) is not None
    finally:
        plt.close = real_close
    fig = captured[0]
    fig.canvas.draw()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        xt = [t for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
        assert 2 <= len(xt) <= 5, ax.get_title()
        assert ax.xaxis.get_offset_text().get_text() == ""
        assert all(float(t.get_text().replace("−", "-")) == int(float(t.get_text().replace("−", "-")))
                   for t in ax.get_yticklabels() if t.get_text())
    assert _overlaps(fig) == []
    real_close(fig)


def _card(row: dict) -> dict:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 4)).save(buf, format="PNG")
    return {**{k: row[k] for k in ("pair_id", "key", "dataset", "method", "psnr", "ms_ssim", "lmd")},
            "sample_png": buf.getvalue(), "sample_frames": [1, 2]}


def test_a_run_of_few_clips_shows_each_clip_once_with_its_padded_frames():
    from eval import report, results

    rows = _demo().demo_rows(1, lpips=False, sync=False)
    rows[0].update(crop_flagged_frames=174, n_frames=174)
    card = _card(rows[0])
    cards = {"worst": {"psnr": [card], "ms_ssim": [card], "lmd": [card]}, "samples": [card]}
    html = report.render_html(rows, [], {"run_id": "r", **results.summarise(rows, [], 1)}, cards)
    assert "Worst clips per metric" not in html and "<h2>Clips" in html
    assert html.count("<div class=card>") == 1 and "174 of 174 frames padded" in html
    many = _demo().demo_rows(8)
    worst = {"psnr": [_card(r) for r in many[:3]], "lmd": [_card(r) for r in many[1:4]]}
    samples = [_card(r) for r in (many[0], many[6])]
    html = report.render_html(many, [], {"run_id": "r", **results.summarise(many, [], 8)},
                              {"worst": worst, "samples": samples})
    assert "Worst clips per metric" in html and "More sample clips" in html
    assert html.count("<div class=card>") == 3 + 3 + 1  # the sample already among the worst is not repeated
