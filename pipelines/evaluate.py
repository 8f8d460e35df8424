"""Beam pipeline: (generated, reference) video pairs -> sharded score tables, a combined summary, reports.

    ListPairs -> Unpaired? -+- unpaired ---------------------------------------------+
                            +- Reshuffle -> Score -+- scored -+-> Shard -> WriteShards -+-> WriteSummary
                                                   +- rejects +-> Summary (CombineFn) --+
                                                              +-> Worst_<metric>, Samples (Top-K)

Only wiring here. ``eval.pairs.list_pairs`` lists the pairs (manifest, or two folders matched by
relative path; a reference without a generated clip is *unpaired*, counted, never scored),
``eval.clip.evaluate_pair`` scores one pair, ``eval.results.write_shard`` writes one shard of a
table, ``eval.aggregate`` is the summary's accumulator and ``eval.results.write_summary`` the last
step. ScoreFn loads the landmark backend, LPIPS, SyncNet and S3FD once per worker (``setup``),
counts, and sends ``PairReject``s — and any non-environment exception of one pair, as a
``scoring_error`` reject — to a tagged output.

Scale: no step holds every row. Rows are keyed by ``hash(pair_id) mod S`` (``S`` from the pair
count, about 2,000 pairs per shard) and each shard is written by one worker; the summary (counts,
exact means and CIs, provenance, a bounded sample of rows for histograms) is a ``CombineFn``; the
sample crops travel only through per-metric Top-K combiners.

Idempotent per run id (default: today's UTC date, dataset, method and a hash of the inputs and of
the scoring config, ``2026-11-30_HDTF_radio_3f9a1c``): everything goes to OUTPUT/runs/<run_id>/; before
the job starts ``results.prepare_run_dir`` removes an earlier run of that id (its completion marker
summary.json first), each file is written whole and atomically and summary.json comes last, so
re-running an id overwrites that run, never adds duplicate rows, and a killed rerun never looks
complete.
"""
from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import time

import apache_beam as beam
from apache_beam.metrics import Metrics

from eval import aggregate, clip, report, reference_spread, results
from eval import pairs as pairs_mod
from eval.config import EvalConfig, scoring_digest
from pipelines import jobrun
from preprocess import config as config_mod
from preprocess import outlock
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
        uri_mod.remove_stale_copies()   # copies of remote videos that killed workers on this machine left

    def process(self, pair: dict):
        t0 = time.perf_counter()
        self.pairs.inc()
        try:
            row, frames = clip.evaluate_pair(pair["generated"], pair["reference"], self.cfg, self.models)
        except clip.PairReject as e:
            yield self._reject(pair, e)
            return
        except Exception as e:  # the per-pair boundary: typed reject, or re-raised when environmental
            rej = clip.failure_reject(e)
            if rej is None:
                raise
            log.exception("pair %s (%s): %s", pair["pair_id"], pair["key"], rej)
            yield self._reject(pair, rej)
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

    def _reject(self, pair: dict, e: "clip.PairReject"):
        self.rejected.inc()
        Metrics.counter(NS, f"rejects_{e.reason}").inc()
        return beam.pvalue.TaggedOutput(self.REJECTS, results.reject_row(
            pair, e.reason, e.side, e.stage, e.message, self.run_id))


class SummaryFn(beam.CombineFn):
    """``eval.aggregate`` as a combiner over ``(kind, row)`` with kind scored/rejected/unpaired."""

    def create_accumulator(self):
        return aggregate.new()

    def add_input(self, acc, item):
        return aggregate.add(acc, *item)

    def merge_accumulators(self, accs):
        return aggregate.merge(accs)

    def extract_output(self, acc):
        return acc


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


def _shard(item: tuple, n_shards: int):
    table, row = item
    return (table, results.shard_of(row["pair_id"], n_shards)), row


def build(p: beam.Pipeline, *, generated: str, reference: str | None, out_dir: str, run_id: str, dataset: str,
          method: str, cfg_dict: dict, started: float, progress_dir: str | None = None):
    """Wire the graph on ``p``; listing runs inside the job (no URI list is embedded in the graph)."""
    schemes = tuple(cfg_dict["input"]["schemes"])
    listed = (p | "Spec" >> beam.Create([(generated, reference)])
                | "ListPairs" >> beam.FlatMap(lambda s: pairs_mod.list_pairs(s[0], s[1], dataset=dataset,
                                                                               method=method, schemes=schemes)))
    n_pairs = listed | "CountPairs" >> beam.combiners.Count.Globally()
    n_shards = n_pairs | "ShardCount" >> beam.Map(results.n_shards_for)
    paired, unpaired = listed | "Unpaired" >> beam.Partition(lambda pair, _: int(pairs_mod.is_unpaired(pair)), 2)
    scored = (paired
              | "Reshuffle" >> beam.Reshuffle()
              | "Score" >> beam.ParDo(jobrun.Tracked(ScoreFn(cfg_dict, run_id), describe=jobrun.uri_of,
                                                   frames=jobrun.frames_of, progress_dir=progress_dir)
                                    ).with_outputs(ScoreFn.REJECTS, main="scored"))
    rejects = scored[ScoreFn.REJECTS]
    tables = ((scored.scored | "Rows" >> beam.FlatMap(lambda e: [("metrics", e["row"]), ("frames", e["frames"])]),
               rejects | "RejectRows" >> beam.Map(lambda r: ("rejects", r)))
              | "Tables" >> beam.Flatten())
    written = (tables
               | "Shard" >> beam.Map(_shard, n_shards=beam.pvalue.AsSingleton(n_shards))
               | "GroupShards" >> beam.GroupByKey()
               | "WriteShards" >> beam.MapTuple(lambda key, rows: results.write_shard(
                   out_dir, key[0], key[1], list(rows), run_id, config=cfg_dict)))
    summary = ((scored.scored | "ScoredKind" >> beam.Map(lambda e: ("scored", e["row"])),
                rejects | "RejectedKind" >> beam.Map(lambda r: ("rejected", r)),
                unpaired | "UnpairedKind" >> beam.Map(lambda pair: ("unpaired", pair)))
               | "Kinds" >> beam.Flatten()
               | "Summary" >> beam.CombineGlobally(SummaryFn()))
    cards = scored.scored | "Cards" >> beam.Map(lambda e: e["card"])
    worst = [(cards | f"Worst_{m}" >> beam.combiners.Top.Of(WORST_K, key=Badness(m))
                    | f"Tag_{m}" >> beam.Map(lambda lst, m=m: (m, [c for c in lst if Badness(m)(c) != float("-inf")])))
             for m in CARD_METRICS]
    worst = worst | "Worst" >> beam.Flatten()
    samples = cards | "Samples" >> beam.combiners.Top.Of(SAMPLES_K, key=_pair_id, reverse=True)
    # reference sensitivity (keys <pair>#ref<k> from `radio dub --references K`): reference_spread.json/.csv
    _ = (scored.scored | "SpreadRows" >> beam.Map(lambda e: e["row"])
                       | "ReferenceSpread" >> ReferenceSpread(out_dir))
    inputs = {"generated": generated, "reference": reference, "dataset": dataset, "method": method,
              "config_digest": scoring_digest(cfg_dict)}
    return (p | "RunDir" >> beam.Create([out_dir])
              | "WriteSummary" >> beam.Map(
                  lambda d, acc, written, worst, samples, n: results.write_summary(
                      d, run_id=run_id, agg=aggregate.finish(acc, n), written=written,
                      cards={"worst": dict(worst), "samples": sorted(samples, key=_pair_id)},
                      config=cfg_dict, inputs=inputs, started=started),
                  acc=beam.pvalue.AsSingleton(summary), written=beam.pvalue.AsList(written),
                  worst=beam.pvalue.AsList(worst), samples=beam.pvalue.AsSingleton(samples),
                  n=beam.pvalue.AsSingleton(n_pairs)))


def job_name(run_id: str) -> str:
    """A Dataflow job name (lowercase letters, digits, '-') for ``run_id``."""
    return ("radio-evaluate-" + re.sub(r"[^a-z0-9-]+", "-", run_id.lower())).strip("-")[:63]


def run(generated: str, output: str, pipeline_args=(), *, reference: str | None = None, run_id: str | None = None,
        dataset: str | None = None, method: str | None = None, config_path: str | None = None, overrides=(),
        progress: bool = False, test_pipeline: beam.Pipeline | None = None) -> dict:
    """Run the evaluation job and wait; returns the run summary (OUTPUT/runs/<run_id>/summary.json).

    ``dataset``/``method`` default to the folder names (:func:`eval.pairs.default_names`)."""
    from eval.models import check_weights
    from pipelines import options as options_mod

    started = time.time()
    cfg = config_mod.load(EvalConfig, config_path, overrides)
    cfg_dict = config_mod.to_dict(cfg)
    default_dataset, default_method = pairs_mod.default_names(generated, reference)
    dataset, method = dataset or default_dataset, method or default_method
    run_id = run_id or results.default_run_id(
        dataset, method, tuple(uri_mod.canonical(x) if x else "" for x in (generated, reference)),
        config_digest=scoring_digest(cfg_dict))  # another scoring config is another run, not a replacement
    out_dir = results.run_dir(output, run_id)  # validates run_id
    schemes = tuple(cfg.input.schemes)
    first = list(itertools.islice(pairs_mod.list_pairs(generated, reference, dataset=dataset, method=method,
                                                       schemes=schemes), os.cpu_count() or 1))
    if not first:
        raise pairs_mod.PairsError(f"No pairs: nothing to evaluate in {generated!r}.")
    if test_pipeline is not None:
        p, is_local, local_files = test_pipeline, True, True
    else:
        job = options_mod.build(pipeline_args, job_name=job_name(run_id), workers=len(first),  # <= pairs
                                reach=itertools.chain(
                                    [("--generated", generated), ("--reference", reference), ("--output", output)],
                                    ((f"a {k} video", pair[k])      # every pair (lazy: only a remote runner reads it)
                                     for pair in pairs_mod.list_pairs(generated, reference, dataset=dataset,
                                                                      method=method, schemes=schemes)
                                     for k in ("generated", "reference"))))
        p, is_local = beam.Pipeline(runner=job.runner, options=job.options), job.is_local
        local_files = job.workers_see_local_files
    check_weights(cfg, workers_see_local_files=local_files)  # fail here, with the fix, not on every worker
    folder = jobrun.progress_folder(is_local, progress)
    # one run per run id (runs of other ids share the output): preparing the run folder deletes its files
    with outlock.hold(output, "evaluate", name=f".radio-evaluate-{run_id}.lock"):
        results.prepare_run_dir(out_dir)
        build(p, generated=generated, reference=reference, out_dir=out_dir, run_id=run_id, dataset=dataset,
              method=method, cfg_dict=cfg_dict, started=started, progress_dir=folder)
        n_pairs = sum(1 for _ in pairs_mod.list_pairs(generated, reference, dataset=dataset, method=method,
                                                      schemes=schemes)) if folder else 0
        bar = jobrun.Bar(folder, n_pairs, unit="pair", desc="evaluate", stream=None,
                         workers=options_mod.local_workers(p.options)) if folder else None
        jobrun.run(p, log_uri=uri_mod.join(out_dir, "job.log"), is_local=is_local, bar=bar, namespace=NS)
    import json

    return json.loads(uri_mod.read_bytes(uri_mod.join(out_dir, "summary.json")))


def main(args, beam_args) -> int:
    """``radio evaluate``: 0 when every pair was scored, rejected or unpaired and at least one was
    scored; 1 when counts do not add up, a pair failed with a ``scoring_error``, or no pair was scored
    (the report holds no number: a nightly run whose every pair was rejected is a failed run to its
    scheduler, not a success with an empty table); 2 on bad input (pairs, config, weights, run id)."""
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
    if not summary["scored"]:
        print(f"radio evaluate: no pair was scored ({summary['rejected']} rejected, {summary.get('unpaired') or 0} unpaired): "
              "the report holds no number; the reasons are in rejects.parquet", file=sys.stderr)
        return 1
    return 0 if summary["counts_add_up"] and not summary["rejects_by_reason"].get("scoring_error") else 1


def format_summary(s: dict) -> str:
    lines = [f"run {s['run_id']} ({s['dataset']} / {s['method']}): {s['inputs']} pairs = {s['scored']} scored + "
             f"{s['rejected']} rejected" + report.unpaired_note(s) + ("" if s["counts_add_up"] else "  (DOES NOT ADD UP)")]
    if s["rejects_by_reason"]:
        lines.append("  rejects: " + ", ".join(f"{k} {v}" for k, v in sorted(s["rejects_by_reason"].items())))
    if s.get("sync_missing"):
        lines.append(f"  {s['sync_missing']} scored pairs without Sync: "
                     + ", ".join(f"{k} {v}" for k, v in sorted(s.get("sync_status", {}).items()) if k != "scored"))
    if s.get("frame_offset_flagged"):
        lines.append(f"  {s['frame_offset_flagged']} scored pairs look shifted in time (frame_offset=record; "
                     "best_offset in metrics.parquet)")
    if report.identity_note(s):
        lines.append("  " + report.identity_note(s))
    lines.append(f"  output: {s['output']}  (metrics.parquet, rejects.parquet, summary.md/csv, report.html)")
    return "\n".join(lines)
