"""Reference sensitivity as a number: how much a method's scores move when only its reference
frame changes (the paper's Fig. 4 claim of "almost zero sensitivity to the reference image").

``radio dub --references K`` dubs each pair with K reference frames (the first face frame plus
frames far apart in pose) and lists the outputs in ``evaluate_pairs.jsonl`` under the keys
``<pair>#ref<k>``. After scoring, the rows of one pair (same dataset, method and ``<pair>``) are a
group; for each metric (PSNR, MS-SSIM, LPIPS, LMD) the group's spread over its references is

    std   = population standard deviation of the K per-clip scores (ddof 0)
    range = max − min of the K scores

and per (dataset, method): the number of groups, the mean std, the mean range and the largest
range. A method that ignores the reference has spread 0; one that copies the reference's mouth
has a large one. Rows whose key has no ``#ref<k>`` suffix, groups with fewer than two
references and missing (null/NaN) scores are left out.

Functional core over score rows (dicts with ``dataset``, ``method``, ``key`` and the metric
columns), split as update/merge/compute so that a Beam ``CombineFn`` (``pipelines/evaluate.py``)
or a plain loop (:func:`spread`) runs it; memory is K × 4 floats per group.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from typing import Iterable

from preprocess import uri as uri_mod

METRICS = ("psnr", "ms_ssim", "lpips", "lmd")
KEY_RE = re.compile(r"^(?P<group>.+)#ref(?P<k>\d+)$")
FILE_JSON = "reference_spread.json"
FILE_CSV = "reference_spread.csv"


def split_key(key: str) -> tuple[str, int] | None:
    """``'spk1/clip#ref2'`` -> ``('spk1/clip', 2)``; None for a key without the suffix."""
    m = KEY_RE.match(key or "")
    return (m["group"], int(m["k"])) if m else None


def create() -> dict:
    return {}


def add(acc: dict, row: dict) -> dict:
    """Fold one score row into ``acc`` ({'dataset\\x00method\\x00group': {k: {metric: value}}})."""
    split = split_key(row.get("key", ""))
    if split is None:
        return acc
    group, k = split
    scores = {m: float(row[m]) for m in METRICS if row.get(m) is not None and not math.isnan(float(row[m]))}
    acc.setdefault("\x00".join((row["dataset"], row["method"], group)), {})[str(k)] = scores
    return acc


def merge(accs: Iterable[dict]) -> dict:
    out: dict = {}
    for a in accs:
        for g, refs in a.items():
            out.setdefault(g, {}).update(refs)
    return out


def _std(v: list[float]) -> float:
    if max(v) == min(v):
        return 0.0  # exactly (the mean of equal floats can round)
    mean = sum(v) / len(v)
    return math.sqrt(sum((x - mean) ** 2 for x in v) / len(v))


def compute(acc: dict) -> dict:
    """{'pairs': [per group: dataset, method, pair, n_references, <metric>_std, <metric>_range],
    'datasets': [per (dataset, method): n_pairs, <metric>_mean_std, _mean_range, _max_range]}."""
    pairs = []
    for g in sorted(acc):
        dataset, method, group = g.split("\x00")
        refs = acc[g]
        if len(refs) < 2:
            continue
        row = {"dataset": dataset, "method": method, "pair": group, "n_references": len(refs)}
        for m in METRICS:
            v = [s[m] for s in refs.values() if m in s]
            row[f"{m}_std"] = _std(v) if len(v) >= 2 else None
            row[f"{m}_range"] = max(v) - min(v) if len(v) >= 2 else None
        pairs.append(row)
    datasets = []
    for dm in sorted({(p["dataset"], p["method"]) for p in pairs}):
        rows = [p for p in pairs if (p["dataset"], p["method"]) == dm]
        d = {"dataset": dm[0], "method": dm[1], "n_pairs": len(rows)}
        for m in METRICS:
            std = [p[f"{m}_std"] for p in rows if p[f"{m}_std"] is not None]
            rng = [p[f"{m}_range"] for p in rows if p[f"{m}_range"] is not None]
            d[f"{m}_mean_std"] = sum(std) / len(std) if std else None
            d[f"{m}_mean_range"] = sum(rng) / len(rng) if rng else None
            d[f"{m}_max_range"] = max(rng) if rng else None
        datasets.append(d)
    return {"metrics": list(METRICS), "pairs": pairs, "datasets": datasets}


def spread(rows: Iterable[dict]) -> dict:
    """:func:`compute` over ``rows`` in one pass."""
    acc = create()
    for r in rows:
        add(acc, r)
    return compute(acc)


def write(out_dir: str, result: dict) -> dict:
    """``reference_spread.json`` (pairs + datasets) and ``reference_spread.csv`` (one line per pair),
    each written whole and atomically; returns ``result``."""
    uri_mod.write_bytes_atomic(uri_mod.join(out_dir, FILE_JSON),
                               json.dumps(result, indent=2, sort_keys=True).encode())
    cols = ["dataset", "method", "pair", "n_references"] + [f"{m}_{s}" for m in METRICS for s in ("std", "range")]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(result["pairs"])
    uri_mod.write_bytes_atomic(uri_mod.join(out_dir, FILE_CSV), buf.getvalue().encode())
    return result


def read(out_dir: str) -> dict | None:
    path = uri_mod.join(out_dir, FILE_JSON)
    return json.loads(uri_mod.read_bytes(path)) if uri_mod.exists(path) else None


def format_lines(result: dict | None) -> list[str]:
    """Console lines: one per (dataset, method) with reference groups; none without."""
    if not result or not result["datasets"]:
        return []

    def f(x):
        return "–" if x is None else f"{x:.4g}"

    lines = ["  reference spread (std / max − min over each pair's references, mean over pairs):"]
    for d in result["datasets"]:
        parts = [f"{m} {f(d[f'{m}_mean_std'])} / {f(d[f'{m}_mean_range'])}" for m in METRICS]
        lines.append(f"    {d['dataset']}/{d['method']} ({d['n_pairs']} pairs): " + ", ".join(parts))
    return lines
