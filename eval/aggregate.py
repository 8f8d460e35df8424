"""A run's summary as a mergeable accumulator: counts, exact means and CIs, provenance, samples.

Plain functions (no Beam), in torchmetrics' update/compute split: :func:`add` folds one score
row, reject or unpaired reference into an accumulator, :func:`merge` joins accumulators built
anywhere (a Beam ``CombineFn`` in ``pipelines.evaluate`` wraps the three), and :func:`finish`
turns one into the summary ``eval.results.write_summary`` writes. Memory does not grow with the
number of pairs: per (dataset, method, metric) the clip count, mean and sum of squared deviations
(Chan et al.'s parallel update, so merging in any order gives the same numbers to float rounding),
per status and reason a count, per provenance field the distinct values, and two bounded,
deterministic samples — the :data:`SAMPLE_ROWS` score rows and :data:`SAMPLE_REJECTS` rejects
with the smallest ``pair_id`` hash — for the report's histograms and reject list — and
``scored_files_digest``, an order-free sum of one hash per scored pair (its id and both files'
fingerprints): two runs with the same digest scored the same files.

Table 1's cells from these moments are the same two-sided Student-t intervals as
``eval.report.mean_ci`` on the clip scores.

Every clip counted as scored is in every mean of a metric it has: a score row's metric is a
finite number or None (not applicable: LPIPS off, no Sync track). A NaN or ±inf clip score is
a ``scoring_error`` reject (:func:`eval.clip.evaluate_pair`; ``python -m eval.report`` does the
same with older runs' rows), never a row silently left out of one metric's mean while the table
still says "n clips scored" (one clip with an infinite LMD made its method look better); one
reaching :func:`add` is a bug and raises.
"""
from __future__ import annotations

import hashlib
import math

METRICS = ("psnr", "ms_ssim", "lpips", "sync_c", "sync_d", "lmd")
SAMPLE_ROWS = 20_000
SAMPLE_REJECTS = 500
PROVENANCE = ("landmark_backend", "landmark_weights", "landmark_fitting", "lmd_landmarks", "lpips_label",
              "lpips_backbone_sha256", "lpips_linear_sha256", "lpips_official_weights", "sync_label",
              "syncnet_sha256", "sync_official_weights", "sync_boxes", "sync_box_source", "protocol",
              "protocol_version", "crop_size", "crop_height", "crop_width", "identity_sha256")
#: the score-row fields the report reads from the sampled rows (per-frame arrays never travel here)
REPORT_FIELDS = ("pair_id", "key", "dataset", "method", "n_frames", "crop_flagged_frames", "sync_missing", "sync_status",
                 "lpips_official_weights", "sync_official_weights") + METRICS + PROVENANCE


#: pairs flagged by the identity check (another person's face) named in the summary, worst first
IDENTITY_NAMED = 5

#: an order-free digest of the files scored: the sum, modulo this, of one hash per scored pair
INPUTS_DIGEST_MOD = 2 ** 128


def pair_print(row: dict) -> int:
    """One scored pair's part of ``scored_files_digest``: its id and both files' fingerprints."""
    text = "\n".join(str(row.get(k) or "") for k in ("pair_id", "generated_fingerprint", "reference_fingerprint"))
    return int(hashlib.sha256(text.encode()).hexdigest()[:32], 16)


def new() -> dict:
    return {"scored": 0, "rejected": 0, "unpaired": 0, "frames": 0, "resized": 0, "offset_flagged": 0,
            "identity_flagged": 0, "identity_named": [], "files_digest": 0, "reasons": {},
            "sync_status": {},
            "groups": {}, "moments": {}, "unofficial": {}, "provenance": {}, "rows": [], "rejects": []}


def nonfinite(row: dict) -> dict[str, float]:
    """``{metric: value}`` of the clip scores of ``row`` that are NaN or ±inf (None, not
    applicable, is not one)."""
    out = {}
    for metric in METRICS:
        v = row.get(metric)
        if v is not None and not math.isfinite(float(v)):
            out[metric] = float(v)
    return out


def _rank(row: dict) -> str:
    return hashlib.sha1(str(row.get("pair_id") or row.get("key") or "").encode()).hexdigest()


def _bump(d: dict, k, n: int = 1) -> None:
    d[k] = d.get(k, 0) + n


def _group(acc: dict, row: dict) -> dict:
    key = (row["dataset"], row["method"])
    if key not in acc["groups"]:
        acc["groups"][key] = {"dataset": key[0], "method": key[1], "scored": 0, "rejected": 0, "unpaired": 0,
                              "sync_missing": 0, "frames": 0, "padded_frames": 0, "padded_clips": 0}
    return acc["groups"][key]


def _moments_add(m: list | None, x: float) -> list:
    n, mean, m2 = m or (0, 0.0, 0.0)
    n += 1
    d = x - mean
    mean += d / n
    return [n, mean, m2 + d * (x - mean)]


def _moments_merge(a: list, b: list) -> list:
    (na, ma, sa), (nb, mb, sb) = a, b
    n = na + nb
    d = mb - ma
    return [n, ma + d * nb / n, sa + sb + d * d * na * nb / n]


def _unofficial_label(row: dict, metric: str) -> str | None:
    if metric == "lpips" and row.get("lpips_official_weights") is False:
        return str(row.get("lpips_label"))
    if metric in ("sync_c", "sync_d") and row.get("sync_official_weights") is False:
        return str(row.get("sync_label"))
    return None


def add(acc: dict, kind: str, row: dict) -> dict:
    """Fold one ``scored`` metrics row, ``rejected`` reject row or ``unpaired`` pair into ``acc``."""
    g = _group(acc, row)
    _bump(acc, kind)
    _bump(g, kind)
    if kind == "rejected":
        _bump(acc["reasons"], row["reason"])
        _keep(acc["rejects"], ((row["dataset"], row["method"], row["key"], row["pair_id"]), row), SAMPLE_REJECTS)
        return acc
    if kind != "scored":
        return acc
    frames = int(row.get("n_frames") or 0)
    acc["frames"] += frames
    g["frames"] += frames
    if row.get("sync_missing"):
        g["sync_missing"] += 1
    acc["resized"] += 1 if row.get("generated_resized") else 0  # same aspect, other frame size
    acc["offset_flagged"] = acc.get("offset_flagged", 0) + (1 if row.get("frame_offset_flagged") else 0)
    if row.get("identity_flagged"):   # identity_check=record: scored although another person's face
        acc["identity_flagged"] = acc.get("identity_flagged", 0) + 1
        acc["identity_named"] = _worst_named(acc.get("identity_named", []) + [_named(row)])
    acc["files_digest"] = (acc.get("files_digest", 0) + pair_print(row)) % INPUTS_DIGEST_MOD
    padded = int(row.get("crop_flagged_frames") or 0)     # frames whose crop box left the frame
    g["padded_frames"] += padded
    g["padded_clips"] += 1 if padded else 0
    _bump(acc["sync_status"], row.get("sync_status") or "unknown")
    bad = nonfinite(row)
    if bad:
        raise ValueError(f"Expected finite clip scores in a scored row. Got {bad} for {row.get('key')!r} "
                         f"({row.get('pair_id')}): such a pair is a scoring_error reject, never a scored row.")
    for metric in METRICS:
        v = row.get(metric)
        if v is None:
            continue
        key = (row["dataset"], row["method"], metric)
        acc["moments"][key] = _moments_add(acc["moments"].get(key), float(v))
        label = _unofficial_label(row, metric)
        if label is not None:
            acc["unofficial"].setdefault(key, set()).add(label)
    for k in PROVENANCE:
        if row.get(k) is not None:
            acc["provenance"].setdefault(k, set()).add(str(row[k]))
    _keep(acc["rows"], (_rank(row), {k: row.get(k) for k in REPORT_FIELDS}), SAMPLE_ROWS)
    return acc


def _named(row: dict) -> dict:
    d = row.get("identity_distance")
    return {"dataset": row["dataset"], "method": row["method"], "key": row["key"],
            "identity_distance": None if d is None else round(float(d), 4)}


def _worst_named(named: list) -> list:
    """The :data:`IDENTITY_NAMED` flagged pairs of largest distance (ties by name): the same
    whatever order rows and accumulators are folded in."""
    return sorted(named, key=lambda n: (-(n["identity_distance"] or 0.0), n["dataset"], n["method"], n["key"])
                  )[:IDENTITY_NAMED]


def _keep(sample: list, item: tuple, cap: int) -> None:
    """Append ``(priority, row)``; past twice ``cap``, keep the ``cap`` smallest priorities."""
    sample.append(item)
    if len(sample) > 2 * cap:
        sample.sort(key=lambda e: e[0])
        del sample[cap:]


def merge(accs) -> dict:
    out = new()
    for a in accs:
        for k in ("scored", "rejected", "unpaired", "frames", "resized", "offset_flagged", "identity_flagged"):
            out[k] += a.get(k, 0)
        out["identity_named"] = _worst_named(out["identity_named"] + list(a.get("identity_named", [])))
        out["files_digest"] = (out["files_digest"] + a.get("files_digest", 0)) % INPUTS_DIGEST_MOD
        for k in ("reasons", "sync_status"):
            for key, v in a[k].items():
                _bump(out[k], key, v)
        for key, g in a["groups"].items():
            counts = ("scored", "rejected", "unpaired", "sync_missing", "frames", "padded_frames", "padded_clips")
            mine = out["groups"].setdefault(key, {**g, **{c: 0 for c in counts}})
            for c in counts:
                mine[c] += g.get(c, 0)
        for key, m in a["moments"].items():
            out["moments"][key] = _moments_merge(out["moments"][key], m) if key in out["moments"] else list(m)
        for k in ("unofficial", "provenance"):
            for key, v in a[k].items():
                out[k].setdefault(key, set()).update(v)
        for k, cap in (("rows", SAMPLE_ROWS), ("rejects", SAMPLE_REJECTS)):
            out[k] = sorted(out[k] + a[k], key=lambda e: e[0])[:cap]
    return out


def mean_ci(n: int, mean: float, m2: float, level: float = 0.95) -> dict:
    """``{'n', 'mean', 'half', 'low', 'high'}`` of the Student-t interval from moments."""
    from scipy import stats

    if n == 0:
        return {"n": 0, "mean": math.nan, "half": math.nan, "low": math.nan, "high": math.nan}
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * math.sqrt(m2 / (n - 1)) / math.sqrt(n)) if n > 1 else math.nan
    return {"n": int(n), "mean": float(mean), "half": half, "low": mean - half, "high": mean + half}


def table(acc: dict) -> list[dict]:
    """Long-form Table 1 (``eval.report.summary_table``'s format) from the moments."""
    from eval.report import METRICS as REPORT_METRICS

    out = []
    for d, m in sorted({(d, m) for d, m in acc["groups"]}):
        if not acc["groups"][(d, m)]["scored"]:
            continue
        for metric, label, higher, _ in REPORT_METRICS:
            mo = acc["moments"].get((d, m, metric), (0, 0.0, 0.0))
            out.append({"dataset": d, "method": m, "metric": metric, "label": label, "higher_is_better": higher,
                        **mean_ci(*mo), "unofficial": sorted(acc["unofficial"].get((d, m, metric), ()))})
    return out


def finish(acc: dict, n_pairs: int) -> dict:
    """The counts, table and provenance of a run (``summary.json``'s computed part), plus the
    sampled rows and rejects under ``_rows``/``_rejects`` for the report (not written to JSON)."""
    scored, rejected, unpaired = acc["scored"], acc["rejected"], acc["unpaired"]
    return {
        "inputs": int(n_pairs), "scored": scored, "rejected": rejected, "unpaired": unpaired,
        "counts_add_up": int(n_pairs) == scored + rejected + unpaired,
        "rejects_by_reason": dict(sorted(acc["reasons"].items())),
        "sync_status": dict(sorted(acc["sync_status"].items())),
        "sync_missing": sum(g["sync_missing"] for g in acc["groups"].values()),
        "too_short_for_sync": acc["sync_status"].get("too_short_for_sync", 0),
        "frames_scored": int(acc["frames"]),
        "generated_resized": int(acc.get("resized", 0)),
        "frame_offset_flagged": int(acc.get("offset_flagged", 0)),
        # identity_check=record: scored pairs whose generated face measured as another person's
        "identity_flagged": int(acc.get("identity_flagged", 0)),
        "identity_flagged_pairs": list(acc.get("identity_named", [])),
        # the same digest: the same pairs scored from the same files (pair ids, file fingerprints)
        "scored_files_digest": f"{acc.get('files_digest', 0):032x}" if scored else None,
        "groups": [acc["groups"][k] for k in sorted(acc["groups"])],
        "weights": {k: sorted(v) for k, v in sorted(acc["provenance"].items())},
        "table": table(acc),
        "_rows": sorted((r for _, r in sorted(acc["rows"], key=lambda e: e[0])[:SAMPLE_ROWS]),
                        key=lambda r: (r["dataset"], r["method"], r["key"], r["pair_id"])),
        "_rejects": [r for _, r in sorted(acc["rejects"], key=lambda e: e[0])[:SAMPLE_REJECTS]],
    }


def summarise(rows: list[dict], rejects: list[dict], n_pairs: int, unpaired: list[dict] = ()) -> dict:
    """:func:`finish` of rows and rejects held in memory (``python -m eval.report``, tests)."""
    acc = new()
    for kind, items in (("scored", rows), ("rejected", rejects), ("unpaired", unpaired)):
        for r in items:
            add(acc, kind, r)
    return finish(acc, n_pairs)
