"""Evaluation reports from realistic, seeded rows, to look at (scripts/screenshot_report.sh).

    PYTHONPATH=. python scripts/report_demo.py OUT_DIR

writes ``OUT_DIR/one-clip/report.html`` (the README walkthrough's shape: 1 clip scored, LPIPS and
Sync switched off, a few padded frames) and ``OUT_DIR/two-methods/report.html`` (2 methods × 12
clips, every metric on, unofficial weights, rejects). The values are drawn around the figures the
bundled clips give (PSNR 25–35 dB, MS-SSIM 0.93–0.99, LMD 1.5–3.5 px); no video is decoded, so the
cards have no sample image.
"""
from __future__ import annotations

import hashlib
import sys

import numpy as np


def demo_rows(n: int, methods=("radio",), dataset: str = "hdtf", lpips: bool = True, sync: bool = True,
              seed: int = 0) -> list[dict]:
    """Metric rows shaped like ``eval.results.METRICS_SCHEMA`` rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for m_i, method in enumerate(methods):
        for k in range(n):
            key = f"speaker_{k // 3:02d}/clip_{k:03d}.mp4"
            n_frames = int(rng.integers(120, 260))
            flagged = int(rng.integers(1, 12)) if rng.random() < 0.4 else 0
            sync_ok = sync and rng.random() > 0.1
            rows.append({
                "run_id": "2026-11-30", "pair_id": hashlib.sha256(f"{method}/{key}".encode()).hexdigest()[:16],
                "key": key, "dataset": dataset, "method": method,
                "generated_uri": f"/out/{method}/{key}", "reference_uri": f"/data/{key}",
                "n_frames": n_frames, "n_frames_compared": n_frames, "n_frames_generated": n_frames,
                "n_frames_reference": n_frames, "frames_truncated": False, "face_coverage": 1.0,
                "n_face_segments": 1, "psnr": float(rng.normal(30 - 1.5 * m_i, 2.0)),
                "ms_ssim": float(np.clip(rng.normal(0.965 - 0.01 * m_i, 0.012), 0.9, 0.999)),
                "lpips": float(abs(rng.normal(0.08 + 0.02 * m_i, 0.02))) if lpips else None,
                "lmd": float(abs(rng.normal(2.4 + 0.3 * m_i, 0.5))),
                "sync_c": float(rng.normal(7.5, 1.0)) if sync_ok else None,
                "sync_d": float(rng.normal(7.0, 0.8)) if sync_ok else None,
                "sync_offset": int(rng.integers(-2, 3)) if sync_ok else None,
                "sync_n_windows": n_frames - 4 if sync_ok else None,
                "sync_missing": (not sync_ok) if sync else None,
                "sync_missing_reason": None if sync_ok else ("no face track" if sync else "sync disabled"),
                "protocol": "radio-v1", "crop_size": 256, "crop_flagged_frames": flagged,
                "frame_height": 512, "frame_width": 512, "generated_resized": False,
                "landmark_backend": "dlib", "landmark_weights": '{"shape_predictor_68_face_landmarks.dat": "fbdc2c"}',
                "lmd_landmarks": "mouth 48-67, dlib", "lpips_backbone_sha256": "ab12" if lpips else None,
                "lpips_linear_sha256": "cd34" if lpips else None,
                "lpips_official_weights": False if lpips else None, "lpips_label": "seeded random" if lpips else None,
                "syncnet_sha256": "ef56" if sync else None, "sync_official_weights": False if sync else None,
                "sync_label": "seeded random" if sync else None, "sync_boxes": None, "sync_track_config": None,
                "seconds": 10.0, "timings": "{}"})
    return rows


def demo_reports() -> dict[str, tuple[list, list, dict]]:
    """name -> (rows, rejects, summary) for ``eval.report.render_html``."""
    from eval import results

    out = {}
    one = demo_rows(1, lpips=False, sync=False)
    one[0].update(key="00015.mp4", crop_flagged_frames=6, n_frames=174, n_frames_compared=174)
    many = demo_rows(12, methods=("radio", "wav2lip"))
    rejects = [{"run_id": "2026-11-30", "pair_id": "0badc0ffee000001", "key": "speaker_09/clip_030.mp4",
                "dataset": "hdtf", "method": "wav2lip", "generated_uri": "/out/wav2lip/speaker_09/clip_030.mp4",
                "reference_uri": "/data/speaker_09/clip_030.mp4", "reason": "length_mismatch", "side": "pair",
                "stage": "probe", "message": "generated has 101 frames at 25 fps, reference 130 (tolerance 2)"}]
    for name, rows, rej in (("one-clip", one, []), ("two-methods", many, rejects)):
        summary = {"run_id": "2026-11-30", "generated": "/out", "reference": "/data", "output": "/eval",
                   "finished_utc": "2026-11-30T15:00:00+00:00",
                   **results.summarise(rows, rej, len(rows) + len(rej))}
        out[name] = (rows, rej, summary)
    return out


def main(out_dir: str) -> int:
    from eval import report

    for name, (rows, rejects, summary) in demo_reports().items():
        files = report.write_report(f"{out_dir.rstrip('/')}/{name}", rows, rejects, summary)
        print(files["report_html"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "out/report-demo"))
