"""Reference sensitivity (issue 11, item 8): dub with K references, score, spread per pair and
per dataset. Two stub generators bracket it: one copies the reference's mouth into the output
(large spread), one ignores the reference (zero spread)."""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DATA_DIR, ffmpeg
from eval import reference_spread as rs
from radio import dub


def test_spread_core_over_rows():
    rows = [{"dataset": "d", "method": "m", "key": f"a#ref{k}", "psnr": p, "ms_ssim": 0.9, "lpips": None,
             "lmd": float("nan")} for k, p in enumerate([30.0, 32.0, 34.0])]
    rows += [{"dataset": "d", "method": "m", "key": "b#ref0", "psnr": 20.0},        # one reference: left out
             {"dataset": "d", "method": "m", "key": "c", "psnr": 10.0},             # no suffix: left out
             {"dataset": "d", "method": "m", "key": "e#ref0", "psnr": 25.0, "ms_ssim": 0.5},
             {"dataset": "d", "method": "m", "key": "e#ref1", "psnr": 25.0, "ms_ssim": 0.7}]
    assert rs.split_key("spk/x#ref12") == ("spk/x", 12) and rs.split_key("x#refa") is None
    out = rs.spread(rows)
    a, e = out["pairs"]
    assert (a["pair"], a["n_references"], e["pair"]) == ("a", 3, "e")
    assert a["psnr_range"] == 4.0 and a["psnr_std"] == pytest.approx(np.std([30, 32, 34]))
    assert a["ms_ssim_std"] == 0.0 and a["lpips_std"] is None and a["lmd_range"] is None
    (d,) = out["datasets"]
    assert d["n_pairs"] == 2 and d["psnr_mean_range"] == 2.0 and d["psnr_max_range"] == 4.0
    assert d["ms_ssim_mean_range"] == pytest.approx(0.1)
    # merging partial accumulators gives the same answer (the Beam CombineFn path)
    halves = [rs.create(), rs.create()]
    for i, r in enumerate(rows):
        rs.add(halves[i % 2], r)
    assert rs.compute(rs.merge(halves)) == out


@dataclass
class _Cfg:
    resolution: int = 192


class CopyReferenceMouth(torch.nn.Module):
    """Stub generator: the target with its lower half taken from the reference."""

    cfg = _Cfg()

    def forward(self, target, reference, mel):
        out = target.clone()
        out[..., 96:, :] = reference[..., 96:, :]
        return out


class IgnoreReference(torch.nn.Module):
    """Stub generator: a function of the target and the audio only."""

    cfg = _Cfg()

    def forward(self, target, reference, mel):
        return target * 0.8 + 0.01 * mel.mean(dim=(1, 2))[:, None, None, None]


def _alexnet(tmp_path: Path) -> list[str]:
    from eval.metrics import lpips as lp

    torch.manual_seed(0)
    path = tmp_path / "alex.pth"
    torch.save({f"features.{k}": v for k, v in lp.alexnet_features().state_dict().items()}, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return [f"lpips.backbone_uri={path}", f"lpips.backbone_sha256={sha}", "lpips.label=random backbone (test)"]


def test_reference_spread_of_two_stub_generators(tmp_path):
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    from pipelines import evaluate as job
    from preprocess.landmarks import get_backend

    backend = get_backend("dlib")
    # self-reconstruction, as in evaluation: the video dubbed with its own speech, as long as the video
    cfg = dub.DubConfig(references=3, batch_size=16, length="video")
    src = speech = tmp_path / "src.mp4"
    ffmpeg("-i", f"file:{DATA_DIR / '00015.mp4'}", "-t", "2", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "12",
           "-c:a", "copy", f"file:{src}")
    rows = []
    for method, model in (("copy-mouth", CopyReferenceMouth()), ("ignore-ref", IgnoreReference())):
        outs = [tmp_path / method / f"00015.ref{k}.mp4" for k in range(3)]
        outs[0].parent.mkdir()
        stats = dub.dub_clip(str(src), str(speech), [str(o) for o in outs], model, backend, cfg)
        assert len(set(stats["references"])) == 3 and stats["references"][0] == 0
        rows += [(str(o), str(src), method, f"00015#ref{k}") for k, o in enumerate(outs)]
    manifest = tmp_path / "pairs.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["generated", "reference", "method", "key"])
        w.writerows(rows)
    out = tmp_path / "eval"
    job.run(str(manifest), str(out), dataset="testset", run_id="r",
            overrides=["max_frames=25", "sync.enabled=false", *_alexnet(tmp_path)],
            test_pipeline=beam.Pipeline(runner=fn_runner.FnApiRunner()))
    result = json.loads((out / "runs" / "r" / rs.FILE_JSON).read_text())
    assert (out / "runs" / "r" / rs.FILE_CSV).read_text().count("\n") == 3  # header + 2 pairs
    by = {d["method"]: d for d in result["datasets"]}
    copy, ignore = by["copy-mouth"], by["ignore-ref"]
    assert copy["n_pairs"] == ignore["n_pairs"] == 1
    for m in rs.METRICS:
        assert ignore[f"{m}_mean_std"] == 0.0 and ignore[f"{m}_max_range"] == 0.0, (m, ignore)
    assert copy["psnr_mean_range"] > 1.0 and copy["ms_ssim_mean_range"] > 0.005, copy
    assert copy["lpips_mean_range"] > 0 and copy["lmd_mean_range"] > 0.1, copy
