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
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
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
