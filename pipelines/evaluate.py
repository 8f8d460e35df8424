"""Beam pipeline: (generated, reference) video pairs -> clip scores, rejects and reports.

    ListPairs -> Reshuffle -> Score -+- scored --> GatherRows, GatherFrames, Worst_<metric>, Samples -+
                                     +- rejects -> GatherRejects ------------------------------------+-> WriteRun

Only wiring here. ``eval.pairs.list_pairs`` lists the pairs (manifest, or two folders matched by
relative path), ``eval.clip.evaluate_pair`` scores one pair, ``eval.results.write_run`` writes
the run's Parquet files, reports and summary. ScoreFn loads the landmark backend, LPIPS and
SyncNet once per worker (``setup``), counts, and sends ``PairReject``s to a tagged output.

Idempotent per run id (default: today's UTC date): everything goes to OUTPUT/runs/<run_id>/, and
each file is replaced whole and atomically by the last step, so re-running an id overwrites
that run and never adds duplicate rows. The last step gathers the clip rows on one worker
(about 2 KB per pair plus the per-frame arrays: fine to ~10^5 pairs); the sample crops travel
only through per-metric Top-K combiners, so their memory does not grow with the dataset.
"""
from __future__ import annotations

import logging
import sys
import re
import time

import apache_beam as beam
from apache_beam.metrics import Metrics

from eval import clip, report, results
from eval import reference_spread
from eval import pairs as pairs_mod
from eval.config import EvalConfig
from pipelines import jobrun
from preprocess import config as config_mod
from preprocess import uri as uri_mod
from pipelines.reference_spread import ReferenceSpread
from preprocess.weights import WeightsError

log = logging.getLogger(__name__)
NS = "radio.evaluate"
CARD_METRICS = tuple(report.HIGHER_IS_BETTER)
WORST_K = 4
SAMPLES_K = 4


class ScoreFn(beam.DoFn):
    """Loads the models once per worker; per pair calls ``eval.clip.evaluate_pair``."""

    REJECTS = "rejects"

    def __init__(self, cfg_dict: dict, run_id: str):
        self.cfg_dict, self.run_id = cfg_dict, run_id
        self.pairs = Metrics.counter(NS, "pairs")
        self.scored = Metrics.counter(NS, "pairs_scored")
        self.rejected = Metrics.counter(NS, "pairs_rejected")
        self.frames = Metrics.counter(NS, "frames_scored")
        self.sync_missing = Metrics.counter(NS, "sync_missing")
        self.seconds = Metrics.distribution(NS, "ms_per_pair")

    def setup(self):
        from eval.models import load_models

        self.cfg = config_mod.from_dict(EvalConfig, self.cfg_dict)
        self.models = load_models(self.cfg)

    def process(self, pair: dict):
        t0 = time.perf_counter()
        self.pairs.inc()
        try:
            row, frames = clip.evaluate_pair(pair["generated"], pair["reference"], self.cfg, self.models)
        except clip.PairReject as e:
            self.rejected.inc()
            Metrics.counter(NS, f"rejects_{e.reason}").inc()
            yield beam.pvalue.TaggedOutput(self.REJECTS, results.reject_row(
                pair, e.reason, e.side, e.stage, e.message, self.run_id))
            return
        self.scored.inc()
        self.frames.inc(row["n_frames"])
        if row["sync_missing"]:
            self.sync_missing.inc()
        self.seconds.update(int((time.perf_counter() - t0) * 1000))
        yield {"row": results.metrics_row(pair, row, self.run_id),
               "frames": results.frames_row(pair["pair_id"], frames, self.run_id),
               "card": {**{k: pair[k] for k in ("pair_id", "key", "dataset", "method")},
                        **{m: row.get(m) for m in CARD_METRICS},
                        "sample_png": frames["sample_png"], "sample_frames": frames["sample_frames"]}}


class Badness:
    """Top-K key: larger = worse clip for ``metric``; clips without the metric never win."""

    def __init__(self, metric: str):
        self.metric = metric

    def __call__(self, card: dict) -> float:
        v = card.get(self.metric)
        if v is None or v != v:
            return float("-inf")
        return -v if report.HIGHER_IS_BETTER[self.metric] else v


def _pair_id(card: dict) -> str:
    return card["pair_id"]


def build(p: beam.Pipeline, *, generated: str, reference: str | None, out_dir: str, run_id: str, dataset: str,
          method: str, cfg_dict: dict, started: float, progress_dir: str | None = None):
    """Wire the graph on ``p``; listing runs inside the job (no URI list is embedded in the graph)."""
    listed = (p | "Spec" >> beam.Create([(generated, reference)])
                | "ListPairs" >> beam.FlatMap(lambda s: pairs_mod.list_pairs(s[0], s[1], dataset=dataset,
                                                                               method=method)))
    n_pairs = listed | "CountPairs" >> beam.combiners.Count.Globally()
    scored = (listed
              | "Reshuffle" >> beam.Reshuffle()
              | "Score" >> beam.ParDo(jobrun.Tracked(ScoreFn(cfg_dict, run_id), describe=jobrun.uri_of,
                                                   frames=jobrun.frames_of, progress_dir=progress_dir)
                                    ).with_outputs(ScoreFn.REJECTS, main="scored"))
    rows = scored.scored | "Rows" >> beam.Map(lambda e: e["row"]) | "GatherRows" >> beam.combiners.ToList()
    frames = scored.scored | "Frames" >> beam.Map(lambda e: e["frames"]) | "GatherFrames" >> beam.combiners.ToList()
    rejects = scored[ScoreFn.REJECTS] | "GatherRejects" >> beam.combiners.ToList()
    cards = scored.scored | "Cards" >> beam.Map(lambda e: e["card"])
    worst = [(cards | f"Worst_{m}" >> beam.combiners.Top.Of(WORST_K, key=Badness(m))
                    | f"Tag_{m}" >> beam.Map(lambda lst, m=m: (m, [c for c in lst if Badness(m)(c) != float("-inf")])))
             for m in CARD_METRICS]
    worst = worst | "Worst" >> beam.Flatten()
    samples = cards | "Samples" >> beam.combiners.Top.Of(SAMPLES_K, key=_pair_id, reverse=True)
    # reference sensitivity (keys <pair>#ref<k> from `radio dub --references K`): reference_spread.json/.csv
    _ = (scored.scored | "SpreadRows" >> beam.Map(lambda e: e["row"])
                       | "ReferenceSpread" >> ReferenceSpread(out_dir))
    inputs = {"generated": generated, "reference": reference, "dataset": dataset, "method": method}
    return (p | "RunDir" >> beam.Create([out_dir])
              | "WriteRun" >> beam.Map(
                  lambda d, rows, rejects, frames, worst, samples, n: results.write_run(
                      d, run_id=run_id, rows=rows, rejects=rejects, frames=frames,
                      cards={"worst": dict(worst), "samples": sorted(samples, key=_pair_id)}, n_pairs=n,
                      config=cfg_dict, inputs=inputs, started=started),
                  rows=beam.pvalue.AsSingleton(rows), rejects=beam.pvalue.AsSingleton(rejects),
                  frames=beam.pvalue.AsSingleton(frames), worst=beam.pvalue.AsList(worst),
                  samples=beam.pvalue.AsSingleton(samples), n=beam.pvalue.AsSingleton(n_pairs)))


def job_name(run_id: str) -> str:
    """A Dataflow job name (lowercase letters, digits, '-') for ``run_id``."""
    return ("radio-evaluate-" + re.sub(r"[^a-z0-9-]+", "-", run_id.lower())).strip("-")[:63]


def run(generated: str, output: str, pipeline_args=(), *, reference: str | None = None, run_id: str | None = None,
        dataset: str = "dataset", method: str = "method", config_path: str | None = None, overrides=(),
        progress: bool = False, test_pipeline: beam.Pipeline | None = None) -> dict:
    """Run the evaluation job and wait; returns the run summary (OUTPUT/runs/<run_id>/summary.json)."""
    from eval.models import check_weights
    from pipelines import options as options_mod

    started = time.time()
    cfg = config_mod.load(EvalConfig, config_path, overrides)
    cfg_dict = config_mod.to_dict(cfg)
    run_id = run_id or results.default_run_id()
    out_dir = results.run_dir(output, run_id)  # validates run_id
    check_weights(cfg)  # fail here, with the fix, not on every worker
    n_pairs = sum(1 for _ in pairs_mod.list_pairs(generated, reference, dataset=dataset, method=method))
    if not n_pairs:
        raise pairs_mod.PairsError(f"No pairs: nothing to evaluate in {generated!r}.")
    if test_pipeline is not None:
        p, is_local = test_pipeline, True
    else:
        job = options_mod.build(pipeline_args, job_name=job_name(run_id))
        p, is_local = beam.Pipeline(runner=job.runner, options=job.options), job.is_local
    folder = jobrun.progress_folder(is_local, progress)
    build(p, generated=generated, reference=reference, out_dir=out_dir, run_id=run_id, dataset=dataset,
          method=method, cfg_dict=cfg_dict, started=started, progress_dir=folder)
    bar = jobrun.Bar(folder, n_pairs, unit="pair", desc="evaluate", stream=None,
                     workers=options_mod.local_workers(p.options)) if folder else None
    jobrun.run(p, log_uri=uri_mod.join(out_dir, "job.log"), is_local=is_local, bar=bar, namespace=NS)
    import json

    return json.loads(uri_mod.read_bytes(uri_mod.join(out_dir, "summary.json")))


def main(args, beam_args) -> int:
    """``radio evaluate``: 0 when every pair was scored or rejected, 1 when counts do not add up,
    2 on bad input (pairs, config, weights, run id)."""
    try:
        summary = run(args.generated, args.output, beam_args, reference=args.reference, run_id=args.run_id,
                      dataset=args.dataset, method=args.method, config_path=args.config, overrides=args.overrides,
                      progress=not getattr(args, "no_progress", False))
    except (pairs_mod.PairsError, config_mod.ConfigError, WeightsError, uri_mod.UnsafePathError,
            results.RunIdError) as e:
        print(f"radio evaluate: error: {e}", file=sys.stderr)  # one line, as radio.cli prints mistakes
        return 2
    print(format_summary(summary))
    for line in reference_spread.format_lines(reference_spread.read(summary["output"])):  # --references K
        print(line)
    return 0 if summary["counts_add_up"] else 1


def format_summary(s: dict) -> str:
    lines = [f"run {s['run_id']}: {s['inputs']} pairs = {s['scored']} scored + {s['rejected']} rejected"
             + ("" if s["counts_add_up"] else "  (DOES NOT ADD UP)")]
    if s["rejects_by_reason"]:
        lines.append("  rejects: " + ", ".join(f"{k} {v}" for k, v in sorted(s["rejects_by_reason"].items())))
    if s.get("sync_missing"):
        lines.append(f"  {s['sync_missing']} scored pairs without Sync (no face track or no audio)")
    lines.append(f"  output: {s['output']}  (metrics.parquet, rejects.parquet, summary.md/csv, report.html)")
    return "\n".join(lines)
