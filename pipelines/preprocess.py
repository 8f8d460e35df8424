"""Beam pipeline: videos -> radio dataset (Parquet rows + rejects + run summary).

    ListSources -> [SkipFinished] -> Reshuffle -> ProcessSource -> Summarise -> WriteSummary

Only wiring here. ``preprocess.source.run_source`` does all per-video work (and writes that
source's files atomically under deterministic names); this module counts, routes failures to
reject records and writes the run summary. Large media travel by URI, never as bytes, and the
Reshuffle after listing lets the runner spread videos over workers.
"""
from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import os
import threading
import time

import apache_beam as beam
from apache_beam.metrics import Metrics

from preprocess import config as config_mod
from preprocess import shards, source, sources
from preprocess import uri as uri_mod

log = logging.getLogger(__name__)
NS = "radio.preprocess"


class ProcessSourceFn(beam.DoFn):
    """Loads the landmark backend once per worker; per element calls ``source.run_source``."""

    def __init__(self, cfg_dict: dict, dataset: str):
        self.cfg_dict = cfg_dict
        self.dataset = dataset
        self.videos = Metrics.counter(NS, "videos")
        self.with_rows = Metrics.counter(NS, "videos_with_rows")
        self.rejected = Metrics.counter(NS, "videos_rejected")
        self.segments = Metrics.counter(NS, "segments")
        self.frames = Metrics.counter(NS, "frames")
        self.ms_per_video = Metrics.distribution(NS, "ms_per_video")

    def setup(self):
        self.cfg = config_mod.from_dict(source.PreprocessConfig, self.cfg_dict)
        self.backend = source.load_backend(self.cfg)
        source.warm_up()

    def process(self, item: dict):
        t0 = time.perf_counter()
        result = source.run_source(item, self.cfg, self.backend, self.dataset)
        self.videos.inc()
        if result["status"] == "rows":
            self.with_rows.inc()
        else:
            self.rejected.inc()
        self.segments.inc(result["segments"])
        self.frames.inc(result["frames"])
        for reason in result["reject_reasons"]:
            Metrics.counter(NS, f"rejects_{reason}").inc()
        for stage, secs in result.get("seconds", {}).items():
            Metrics.counter(NS, f"ms_{stage}").inc(int(secs * 1000))
        self.ms_per_video.update(int(1000 * (time.perf_counter() - t0)))
        yield result


class SummaryFn(beam.CombineFn):
    """Adds per-source results into the run's counts (associative, so it scales out)."""

    def create_accumulator(self):
        return {"processed": 0, "sources_with_rows": 0, "sources_rejected": 0, "segments": 0,
                "frames": 0, "segment_rejects": 0, "rejects_by_reason": {}, "seconds_by_stage": {}}

    def add_input(self, acc, r):
        acc["processed"] += 1
        acc["sources_with_rows" if r["status"] == "rows" else "sources_rejected"] += 1
        acc["segments"] += r["segments"]
        acc["frames"] += r["frames"]
        acc["segment_rejects"] += r["segment_rejects"]
        for reason in r["reject_reasons"]:
            acc["rejects_by_reason"][reason] = acc["rejects_by_reason"].get(reason, 0) + 1
        for k, v in r.get("seconds", {}).items():
            acc["seconds_by_stage"][k] = acc["seconds_by_stage"].get(k, 0.0) + v
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for a in accs:
            for k in ("processed", "sources_with_rows", "sources_rejected", "segments", "frames", "segment_rejects"):
                out[k] += a[k]
            for d in ("rejects_by_reason", "seconds_by_stage"):
                for k, v in a[d].items():
                    out[d][k] = out[d].get(k, 0) + v
        return out

    def extract_output(self, acc):
        return acc


class PartitionFinishedFn(beam.DoFn):
    """After joining listed sources with done markers by source id: pass on what is left to do."""

    SKIPPED = "skipped"

    def __init__(self, resume: bool, retry_rejects: bool):
        self.resume, self.retry_rejects = resume, retry_rejects
        self.listed = Metrics.counter(NS, "videos_listed")
        self.skipped = Metrics.counter(NS, "videos_skipped_resume")

    def process(self, joined):
        _sid, groups = joined
        items, done = list(groups["listed"]), list(groups["done"])
        for item in items[:1]:  # the same URI listed twice is one source
            self.listed.inc()
            finished = bool(done) and self.resume and not (self.retry_rejects and done[0]["status"] != "rows")
            if finished:
                self.skipped.inc()
                yield beam.pvalue.TaggedOutput(self.SKIPPED, 1)
            else:
                yield item


def _done_markers(dataset: str):
    for sid in sorted(shards.done_source_ids(dataset)):
        try:
            yield sid, json.loads(uri_mod.read_bytes(shards.done_uri(dataset, sid)))
        except (FileNotFoundError, json.JSONDecodeError):
            continue  # a marker that vanished or is unreadable: the source is simply redone


def write_summary(acc: dict, *, dataset: str, run_id: str, skipped: int, cfg: dict, started: float) -> dict:
    summary = dict(acc)
    listed = skipped + acc["processed"]
    summary.update({
        "run_id": run_id, "dataset": dataset, "inputs": listed, "skipped_resume": skipped,
        "wall_seconds": round(time.time() - started, 2),
        "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": cfg,
    })
    summary["counts_add_up"] = (listed == skipped + acc["sources_with_rows"] + acc["sources_rejected"])
    data = json.dumps(summary, indent=2, sort_keys=True).encode()
    uri_mod.write_bytes_atomic(uri_mod.join(dataset, "runs", run_id, "summary.json"), data)
    uri_mod.write_bytes_atomic(uri_mod.join(dataset, "summary.json"), data)
    return summary


def build(p: beam.Pipeline, input_spec: str, dataset: str, cfg: dict, *, run_id: str, resume: bool,
          retry_rejects: bool, started: float):
    """Wire the graph on ``p``. Listing runs inside the job (no URI list is embedded in the graph),
    the join with earlier runs' done markers is a CoGroupByKey (scales to 10^6 sources), and the
    summary is written by the last step, so it works the same on every runner."""
    listed = (p | "Spec" >> beam.Create([input_spec])
                | "ListSources" >> beam.FlatMap(sources.list_sources)
                | "KeyBySource" >> beam.Map(lambda it: (source.source_id_of(it), it)))
    done = (p | "Dataset" >> beam.Create([dataset] if resume else [])
              | "ListFinished" >> beam.FlatMap(_done_markers))
    parts = ({"listed": listed, "done": done}
             | "JoinFinished" >> beam.CoGroupByKey()
             | "SkipFinished" >> beam.ParDo(PartitionFinishedFn(resume, retry_rejects)).with_outputs(
                 PartitionFinishedFn.SKIPPED, main="todo"))
    skipped = parts[PartitionFinishedFn.SKIPPED] | "CountSkipped" >> beam.combiners.Count.Globally()
    acc = (parts.todo
           | "Reshuffle" >> beam.Reshuffle()
           | "ProcessSource" >> beam.ParDo(ProcessSourceFn(cfg, dataset))
           | "Summarise" >> beam.CombineGlobally(SummaryFn()))
    return acc | "WriteSummary" >> beam.Map(
        lambda a, n_skipped: write_summary(a, dataset=dataset, run_id=run_id, skipped=n_skipped, cfg=cfg,
                                           started=started),
        n_skipped=beam.pvalue.AsSingleton(skipped))


class _Progress:
    """Local progress bar: counts done/ markers written since the job started."""

    def __init__(self, dataset: str, total: int, started: float):
        self.dataset, self.total, self.started = dataset, total, started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True) if total else None

    def _count(self) -> int:
        import os

        folder = uri_mod.join(self.dataset, shards.DONE)
        if not uri_mod.is_local(folder) or not os.path.isdir(folder):
            return 0
        return sum(1 for e in os.scandir(folder) if e.name.endswith(".json") and e.stat().st_mtime >= self.started)

    def _run(self):
        from tqdm import tqdm

        with tqdm(total=self.total, unit="video", desc="preprocess") as bar:
            while not self._stop.wait(1.0):
                bar.update(min(self._count(), self.total) - bar.n)
            bar.update(min(self._count(), self.total) - bar.n)

    def __enter__(self):
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()


def run(input_spec: str, dataset: str, pipeline_args=(), *, config_path: str | None = None,
        overrides=(), resume: bool = False, retry_rejects: bool = False, run_id: str | None = None,
        progress: bool = False, test_pipeline: beam.Pipeline | None = None) -> dict:
    """Run the preprocess job and wait; returns the run summary (written under the dataset)."""
    return run_job(input_spec, dataset, pipeline_args, config_path=config_path, overrides=overrides,
                   resume=resume, retry_rejects=retry_rejects, run_id=run_id, progress=progress,
                   test_pipeline=test_pipeline)[0]


def run_job(input_spec: str, dataset: str, pipeline_args=(), *, config_path: str | None = None,
            overrides=(), resume: bool = False, retry_rejects: bool = False, run_id: str | None = None,
            progress: bool = False, test_pipeline: beam.Pipeline | None = None):
    """``run``, also returning the finished ``PipelineResult`` (its ``metrics()`` hold the per-stage
    counters of ``ProcessSourceFn``): ``(summary, result)``."""
    from pipelines import options as options_mod

    started = time.time()
    cfg = config_mod.load(source.PreprocessConfig, config_path, overrides)
    cfg_dict = config_mod.to_dict(cfg)
    run_id = run_id or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    summary_uri = uri_mod.join(dataset, "runs", run_id, "summary.json")  # validates run_id
    # fail fast on a missing input; and no more local worker processes than inputs (one input
    # runs in this process: no worker start-up at all)
    n_first = sum(1 for _ in itertools.islice(sources.list_sources(input_spec), os.cpu_count() or 1))
    if test_pipeline is not None:
        p, is_local = test_pipeline, True
    else:
        job = options_mod.build(pipeline_args, job_name=f"radio-preprocess-{run_id.lower()}",
                                workers=max(1, n_first))
        p, is_local = beam.Pipeline(runner=job.runner, options=job.options), job.is_local
    total = 0
    if progress and is_local:  # the bar needs a total: list here too (cheap for a local corpus)
        total = sum(1 for _ in sources.list_sources(input_spec))
    build(p, input_spec, dataset, cfg_dict, run_id=run_id, resume=resume, retry_rejects=retry_rejects,
          started=started)
    with _Progress(dataset, total, started - 1.0):
        result = p.run()
        result.wait_until_finish()
    return json.loads(uri_mod.read_bytes(summary_uri)), result


def main(args, beam_args) -> int:
    from pipelines.options import OptionsError

    try:
        summary = run(args.input, args.output, beam_args, config_path=args.config, overrides=args.overrides,
                      resume=args.resume, retry_rejects=args.retry_rejects, run_id=args.run_id,
                      progress=not args.no_progress)
    except (sources.SourceError, config_mod.ConfigError, OptionsError) as e:
        print(f"radio preprocess: {e}")
        return 2
    print(format_summary(summary))
    return 0 if summary["counts_add_up"] else 1


def format_summary(s: dict) -> str:
    lines = [
        f"run {s['run_id']}: {s['inputs']} inputs = {s['sources_with_rows']} with rows + "
        f"{s['sources_rejected']} rejected + {s['skipped_resume']} finished earlier"
        + ("" if s["counts_add_up"] else "  (DOES NOT ADD UP)"),
        f"  {s['segments']} segments, {s['frames']} frames, {s['segment_rejects']} segment rejects",
    ]
    if s["rejects_by_reason"]:
        lines.append("  rejects: " + ", ".join(f"{k} {v}" for k, v in sorted(s["rejects_by_reason"].items())))
    lines.append(f"  output: {s['dataset']}  (rows/, rejects/, summary.json)")
    return "\n".join(lines)
