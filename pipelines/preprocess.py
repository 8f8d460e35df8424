"""Beam pipeline: videos -> radio dataset (Parquet rows + rejects + run summary).

    ListSources -> [CheckFinished -> SkipFinished] -> Reshuffle -> ProcessSource -> Summarise -> WriteSummary

Only wiring here. ``preprocess.source.run_source`` does all per-video work (and writes that
source's files atomically under deterministic names); this module counts, retries environment
failures and writes the run summary. Large media travel by URI, never as bytes, and the
Reshuffle after listing lets the runner spread videos over workers.

Failures (SPEC): a content failure is a reject (done marker). An environment failure (no space,
I/O, network, out of memory, a killed worker child) is retried in the DoFn with backoff
(``worker.attempts``, ``worker.backoff_s``); when the tries are spent the source is ``failed``:
no done marker, no reject, counted in the summary, and the run exits non-zero, so that
``--resume`` finishes it. Raising instead would end a local job at the first such error and a
Dataflow job after four, losing the rest of the run.
"""
from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import os
import sys
import time

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines import jobrun
from preprocess import config as config_mod
from preprocess import catalog, failures, outlock, shards, source, sources
from preprocess import uri as uri_mod

log = logging.getLogger(__name__)
NS = "radio.preprocess"


class ProcessSourceFn(beam.DoFn):
    """Per element: ``source.run_source`` with retries on environment failures, in a child process
    holding the landmark backend (``worker.isolate``, the default) or in this one."""

    def __init__(self, cfg_dict: dict, dataset: str):
        self.cfg_dict = cfg_dict
        self.dataset = dataset
        self.videos = Metrics.counter(NS, "videos")
        self.with_rows = Metrics.counter(NS, "videos_with_rows")
        self.rejected = Metrics.counter(NS, "videos_rejected")
        self.failed = Metrics.counter(NS, "videos_failed")
        self.retries = Metrics.counter(NS, "environment_retries")
        self.segments = Metrics.counter(NS, "segments")
        self.frames = Metrics.counter(NS, "frames")
        self.ms_per_video = Metrics.distribution(NS, "ms_per_video")

    def setup(self):
        from preprocess.worker import SourceWorker

        self.cfg = config_mod.from_dict(source.PreprocessConfig, self.cfg_dict)
        self.worker = self.backend = None
        if self.cfg.worker.isolate:
            self.worker = SourceWorker(self.cfg_dict, self.dataset,   # the child starts on first use
                                       stall_s=self.cfg.worker.stall_s)
        else:
            self.backend = source.load_backend(self.cfg)
            source.warm_up()
            uri_mod.remove_stale_copies()   # copies of remote sources that killed workers left

    def teardown(self):
        if self.worker is not None:
            self.worker.close()

    def _run(self, item: dict) -> dict:
        if self.worker is not None:
            return self.worker.run(item)
        return source.run_source(item, self.cfg, self.backend, self.dataset)

    def process(self, item: dict):
        t0 = time.perf_counter()
        try:
            result = failures.call_with_retries(
                lambda: self._run(item), attempts=self.cfg.worker.attempts, backoff_s=self.cfg.worker.backoff_s,
                what=item["uri"], on_retry=lambda _e: self.retries.inc())
        except Exception as e:
            if not failures.is_environment_error(e):
                raise
            log.error("%s failed after %d tries: %s (no done marker: --resume retries it)",
                      item["uri"], self.cfg.worker.attempts, failures.describe(e))
            result = failed_result(item, e)
        self.videos.inc()
        {"rows": self.with_rows, "rejected": self.rejected, "failed": self.failed}[result["status"]].inc()
        self.segments.inc(result["segments"])
        self.frames.inc(result["frames"])
        for reason in result["reject_reasons"]:
            Metrics.counter(NS, f"rejects_{reason}").inc()
        for stage, secs in result.get("seconds", {}).items():
            Metrics.counter(NS, f"ms_{stage}").inc(int(secs * 1000))
        self.ms_per_video.update(int(1000 * (time.perf_counter() - t0)))
        yield result


def failed_result(item: dict, exc: BaseException) -> dict:
    """The result of a source whose tries all ended in environment failures."""
    return {"source_uri": item["uri"], "source_id": source.source_id_of(item), "status": "failed",
            "segments": 0, "frames": 0, "segment_rejects": 0, "reject_reasons": [],
            "error": failures.describe(exc)}


STATUS_KEY = {"rows": "sources_with_rows", "rejected": "sources_rejected", "failed": "sources_failed"}
MAX_LISTED_FAILURES = 20


class SummaryFn(beam.CombineFn):
    """Adds per-source results into the run's counts (associative, so it scales out)."""

    def create_accumulator(self):
        return {"processed": 0, "sources_with_rows": 0, "sources_rejected": 0, "sources_failed": 0,
                "segments": 0, "frames": 0, "segment_rejects": 0, "rejects_by_reason": {},
                "seconds_by_stage": {}, "failures": []}

    def add_input(self, acc, r):
        acc["processed"] += 1
        acc[STATUS_KEY[r["status"]]] += 1
        if r["status"] == "failed" and len(acc["failures"]) < MAX_LISTED_FAILURES:
            acc["failures"].append({"source_uri": r["source_uri"], "error": r["error"]})
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
            for k in ("processed", "sources_with_rows", "sources_rejected", "sources_failed", "segments", "frames",
                      "segment_rejects"):
                out[k] += a[k]
            out["failures"] = (out["failures"] + a["failures"])[:MAX_LISTED_FAILURES]
            for d in ("rejects_by_reason", "seconds_by_stage"):
                for k, v in a[d].items():
                    out[d][k] = out[d].get(k, 0) + v
        return out

    def extract_output(self, acc):
        return acc


def keep_recorded_labels(item: dict, marker: dict | None) -> dict:
    """``item`` with the labels its finished run recorded where the input gives none: a glob, a
    folder or a manifest without that column (or cell) says nothing about ``speaker_id``/``split``.
    Before, ``--resume`` with a glob over a dataset made from a manifest took every missing label
    for a change to null: it redid every source and wrote rows without speaker or split (its eval
    clips then trained as train)."""
    recorded = (marker or {}).get("labels") or {}
    given = source.labels_of(item)
    filled = {k: v if v is not None else recorded.get(k) for k, v in given.items()}
    return item if filled == given else {**item, **filled}


class PartitionFinishedFn(beam.DoFn):
    """After joining listed sources with checked done markers and rows files by source id: pass on
    what is left to do. A source whose marker failed its check (``CheckFinishedFn``) is redone and
    counted; an unlisted one with rows goes to ``ReplaceSupersededFn`` (by its marker, or by its id
    when it has none)."""

    SKIPPED = "skipped"
    UNTRUSTED = "untrusted"
    UNLISTED = "unlisted"
    UNMARKED = "unmarked"
    WITH_ROWS = "with_rows"

    def __init__(self, resume: bool, retry_rejects: bool):
        self.resume, self.retry_rejects = resume, retry_rejects
        self.listed = Metrics.counter(NS, "videos_listed")
        self.skipped = Metrics.counter(NS, "videos_skipped_resume")
        self.untrusted = Metrics.counter(NS, "videos_redone_after_check")

    def process(self, joined):
        _sid, groups = joined
        items, done = list(groups["listed"]), list(groups["done"])
        if not items and done and done[0].get("source_uri") and done[0].get("status") == "rows":
            # an earlier run's source with rows that this input does not list (ReplaceSupersededFn)
            yield beam.pvalue.TaggedOutput(self.UNLISTED, (uri_mod.canonical(done[0]["source_uri"]),
                                                           (_sid, done[0]["span"])))
        elif not items and not done and list(groups.get("rows", ())):
            # the same, killed before its done marker: training reads its rows all the same
            yield beam.pvalue.TaggedOutput(self.UNMARKED, _sid)
        for item in items[:1]:  # the same URI listed twice is one source
            self.listed.inc()
            item = keep_recorded_labels(item, done[0] if done else None)
            marker = done[0] if done and self.resume else None
            relabelled = (marker is not None and marker["why"] is None and marker.get("status") == "rows"
                          and marker.get("labels") is not None and marker["labels"] != source.labels_of(item))
            if relabelled:
                log.warning("redoing source %s: the manifest changed its labels from %s to %s", _sid,
                            marker["labels"], source.labels_of(item))
            # a file rewritten under the same name (a re-download, a fixed copy): redone, its old rows
            # replaced (a missing file keeps what was made of it; a marker from before fingerprints stands)
            replaced = False
            if marker is not None and marker["why"] is None and not relabelled and marker.get("input"):
                now = catalog.fingerprint(item["uri"])     # (one metadata request; only where it decides)
                replaced = now is not None and now != marker["input"]
            if replaced:
                log.warning("redoing source %s: %s changed since it was processed (size and change tag %s -> %s)",
                            _sid, item["uri"], marker["input"], now)
            if marker is not None and (marker["why"] is not None or relabelled or replaced):
                self.untrusted.inc()
                yield beam.pvalue.TaggedOutput(self.UNTRUSTED, 1)
                yield item
            elif marker is not None and not (self.retry_rejects and marker["status"] != "rows"):
                self.skipped.inc()
                yield beam.pvalue.TaggedOutput(self.SKIPPED, 1)
                if marker["status"] == "rows":   # its rows stand for its frames (ReplaceSupersededFn)
                    yield beam.pvalue.TaggedOutput(self.WITH_ROWS, listed_span(item))
            else:
                yield item


class CheckFinishedFn(beam.DoFn):
    """A done marker -> ``(source_id, {"status", "why"})``; ``why`` (None when trusted) says what
    failed its check (``shards.check_done``: config fingerprint, each file's size and footer)."""

    def __init__(self, dataset: str, fingerprint: str, check: bool = True):
        self.dataset, self.fingerprint, self.check = dataset, fingerprint, check

    def process(self, sid: str):
        try:
            marker = json.loads(uri_mod.read_bytes(shards.done_uri(self.dataset, sid)))
        except FileNotFoundError:
            marker = None  # vanished since the listing: the source is simply redone
        except (json.JSONDecodeError, UnicodeDecodeError):
            marker = {"status": None}
        if marker is not None and not self.check:   # not resuming: only its labels are used
            yield sid, {"status": marker.get("status"), "why": "not resumed", "labels": marker.get("labels"),
                        **covers(marker)}
        elif marker is not None:
            why = shards.check_done(self.dataset, marker, self.fingerprint) if marker.get("status") else \
                "unreadable done marker"
            if why is not None:
                log.warning("redoing source %s: %s", sid, why)
            yield sid, {"status": marker.get("status"), "why": why, "labels": marker.get("labels"),
                        "input": marker.get("input"), **covers(marker)}


def covers(marker: dict) -> dict:
    """What video and frames a done marker's source stands for: ``{"source_uri", "span": (first,
    stop)}`` (``stop`` None: to the end; a marker without ``range``: the whole video)."""
    rng = marker.get("range") or {}
    return {"source_uri": marker.get("source_uri"),
            "span": (int(rng.get("first_frame") or 0),
                     None if rng.get("stop_frame") is None else int(rng["stop_frame"]))}


def spans_overlap(a: tuple, b: tuple) -> bool:
    """Two frame spans ``(first, stop)`` (``stop`` None: to the end) share a frame."""
    return (b[1] is None or a[0] < b[1]) and (a[1] is None or b[0] < a[1])


def listed_span(item: dict) -> tuple:
    """A listed item's canonical video and frames ``(first, stop)`` (the whole video: ``(0, None)``)."""
    return uri_mod.canonical(item["uri"]), source.range_of(item) or (0, None)


def result_span(result: dict) -> tuple:
    """A processed source's canonical video and frames, from its result (``run_source``)."""
    rng = result.get("range") or {}
    return uri_mod.canonical(result["source_uri"]), (int(rng.get("first_frame") or 0), rng.get("stop_frame"))


class ReplaceSupersededFn(beam.DoFn):
    """Per video (by canonical URI): remove an earlier run's source with rows that this input does
    not list but whose frames a listed source with rows covers (a range changed, a whole-file line
    split into ranges or back). Kept, its rows would hold those frames a second time beside the new
    source's (training read them twice; with another ``split``, eval frames in train). Only a listed
    source that has rows (made now, or finished earlier) replaces: one rejected (a whole 3 h file
    ``too_long`` where ranges of it have rows) or failed leaves the earlier rows alone. Rows and
    rejects go first, its done marker last, so a killed run leaves the marker for the next run. An
    earlier source is known by its done marker, or, for rows whose run was killed before it wrote
    the marker, by the frames its rows hold (``shards.rows_cover``)."""

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.replaced = Metrics.counter(NS, "videos_replaced")

    def process(self, joined):
        video, groups = joined
        spans, earlier = list(groups["listed"]), list(groups["earlier"])
        for sid, span in earlier:
            over = next((s for s in spans if spans_overlap(tuple(span), tuple(s))), None)
            if over is None:
                continue
            log.warning("removing source %s of %s (frames %s..%s, an earlier run's): this input lists frames "
                        "%s..%s of that video under another id; kept, those frames would be in two rows",
                        sid, video, span[0], "end" if span[1] is None else span[1] - 1,
                        over[0], "end" if over[1] is None else over[1] - 1)
            shards.remove_source(self.dataset, sid)
            self.replaced.inc()
            yield 1


def write_summary(acc: dict, *, dataset: str, run_id: str, skipped: int, cfg: dict, started: float,
                  redone: int = 0, replaced: int = 0) -> dict:
    summary = dict(acc)
    listed = skipped + acc["processed"]
    summary.update({
        "run_id": run_id, "dataset": dataset, "inputs": listed, "skipped_resume": skipped,
        "redone_after_check": redone, "replaced_earlier": replaced,
        "config_fingerprint": shards.config_fingerprint(cfg),
        "wall_seconds": round(time.time() - started, 2),
        "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": cfg,
    })
    summary["counts_add_up"] = (listed == skipped + acc["sources_with_rows"] + acc["sources_rejected"]
                                + acc["sources_failed"])
    data = json.dumps(summary, indent=2, sort_keys=True).encode()
    uri_mod.write_bytes_atomic(uri_mod.join(dataset, "runs", run_id, "summary.json"), data)
    uri_mod.write_bytes_atomic(uri_mod.join(dataset, "summary.json"), data)
    return summary


def build(p: beam.Pipeline, input_spec: str, dataset: str, cfg: dict, *, run_id: str, resume: bool,
          retry_rejects: bool, started: float, progress_dir: str | None = None):
    """Wire the graph on ``p``. Listing runs inside the job (no URI list is embedded in the graph),
    the join with earlier runs' done markers is a CoGroupByKey (scales to 10^6 sources), and the
    summary is written by the last step, so it works the same on every runner."""
    listed = (p | "Spec" >> beam.Create([input_spec])
                | "ListSources" >> beam.FlatMap(sources.list_sources, schemes=tuple(cfg["input"]["schemes"]))
                | "KeyBySource" >> beam.Map(lambda it: (source.source_id_of(it), it)))
    # without --resume the markers are read too (not checked): for the labels a label-less input keeps
    folder = p | "Dataset" >> beam.Create([dataset])
    done = (folder
            | "ListFinished" >> beam.FlatMap(lambda d: sorted(shards.done_source_ids(d)))
            | "SpreadFinished" >> beam.Reshuffle()
            | "CheckFinished" >> beam.ParDo(CheckFinishedFn(dataset, shards.config_fingerprint(cfg), check=resume)))
    # every source with rows: those without a done marker (a run killed between the two writes) are
    # earlier sources too, known by the frames their rows hold
    rows = folder | "ListRows" >> beam.FlatMap(lambda d: [(sid, True) for sid in shards.row_source_ids(d)])
    parts = ({"listed": listed, "done": done, "rows": rows}
             | "JoinFinished" >> beam.CoGroupByKey()
             | "SkipFinished" >> beam.ParDo(PartitionFinishedFn(resume, retry_rejects)).with_outputs(
                 PartitionFinishedFn.SKIPPED, PartitionFinishedFn.UNTRUSTED, PartitionFinishedFn.UNLISTED,
                 PartitionFinishedFn.UNMARKED,
                 PartitionFinishedFn.WITH_ROWS, main="todo"))
    skipped = parts[PartitionFinishedFn.SKIPPED] | "CountSkipped" >> beam.combiners.Count.Globally()
    redone = parts[PartitionFinishedFn.UNTRUSTED] | "CountRedone" >> beam.combiners.Count.Globally()
    results = (parts.todo
               | "Reshuffle" >> beam.Reshuffle()
               | "ProcessSource" >> beam.ParDo(jobrun.Tracked(ProcessSourceFn(cfg, dataset), describe=jobrun.uri_of,
                                                              frames=jobrun.frames_of, progress_dir=progress_dir)))
    acc = results | "Summarise" >> beam.CombineGlobally(SummaryFn())
    made = (results | "WithRows" >> beam.Filter(lambda r: r["status"] == "rows")
                    | "SpanOfResult" >> beam.Map(result_span))
    # an earlier source of a listed video whose frames a listed source with rows now covers (a changed clip range)
    with_rows = (made, parts[PartitionFinishedFn.WITH_ROWS]) | "ListedWithRows" >> beam.Flatten()
    unmarked = parts[PartitionFinishedFn.UNMARKED] | "CoverOfUnmarked" >> beam.FlatMap(
        lambda sid: [(uri_mod.canonical(c["source_uri"]), (sid, c["span"]))] if (c := shards.rows_cover(dataset, sid))
        else [])
    earlier = (parts[PartitionFinishedFn.UNLISTED], unmarked) | "EarlierSources" >> beam.Flatten()
    replaced = ({"listed": with_rows, "earlier": earlier}
                | "JoinVideos" >> beam.CoGroupByKey()
                | "ReplaceSuperseded" >> beam.ParDo(ReplaceSupersededFn(dataset))
                | "CountReplaced" >> beam.combiners.Count.Globally())
    return acc | "WriteSummary" >> beam.Map(
        lambda a, n_skipped, n_redone, n_replaced: write_summary(
            a, dataset=dataset, run_id=run_id, skipped=n_skipped, cfg=cfg, started=started, redone=n_redone,
            replaced=n_replaced),
        n_skipped=beam.pvalue.AsSingleton(skipped), n_redone=beam.pvalue.AsSingleton(redone),
        n_replaced=beam.pvalue.AsSingleton(replaced))


def run(input_spec: str, dataset: str, pipeline_args=(), *, config_path: str | None = None,
        overrides=(), resume: bool = False, retry_rejects: bool = False, run_id: str | None = None,
        progress: bool = False, new_version: bool = False, test_pipeline: beam.Pipeline | None = None) -> dict:
    """Run the preprocess job and wait; returns the run summary (written under the dataset)."""
    return run_job(input_spec, dataset, pipeline_args, config_path=config_path, overrides=overrides,
                   resume=resume, retry_rejects=retry_rejects, run_id=run_id, progress=progress,
                   new_version=new_version, test_pipeline=test_pipeline)[0]


def run_job(input_spec: str, dataset: str, pipeline_args=(), *, config_path: str | None = None,
            overrides=(), resume: bool = False, retry_rejects: bool = False, run_id: str | None = None,
            progress: bool = False, new_version: bool = False, test_pipeline: beam.Pipeline | None = None):
    """``run``, also returning the finished ``PipelineResult`` (its ``metrics()`` hold the per-stage
    counters of ``ProcessSourceFn``): ``(summary, result)``.

    Before any work: refuses (``shards.DatasetConfigError``, one line) a dataset made with another
    output-affecting config unless ``new_version``, and removes temporaries that killed runs of
    this dataset left."""
    from pipelines import options as options_mod

    started = time.time()
    cfg = config_mod.load(source.PreprocessConfig, config_path, overrides)
    cfg_dict = config_mod.to_dict(cfg)
    run_id = run_id or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    summary_uri = uri_mod.join(dataset, "runs", run_id, "summary.json")  # validates run_id
    # fail fast on a missing input; and no more local worker processes than inputs (one input
    # runs in this process: no worker start-up at all)
    schemes = tuple(cfg.input.schemes)
    first = list(itertools.islice(sources.list_sources(input_spec, schemes), os.cpu_count() or 1))
    if test_pipeline is not None:
        p, is_local = test_pipeline, True
    else:
        # reach: every listed video, lazily (only a remote runner's check reads it)
        job = options_mod.build(pipeline_args, job_name=f"radio-preprocess-{run_id.lower()}",
                                workers=max(1, len(first)),
                                reach=itertools.chain([("--input", input_spec), ("--output", dataset)],
                                                      (("a video of --input", it["uri"])
                                                       for it in sources.list_sources(input_spec, schemes))))
        p, is_local = beam.Pipeline(runner=job.runner, options=job.options), job.is_local
    total = 0
    if progress and is_local:  # the bar needs a total: list here too (cheap for a local corpus)
        log.info("listing %s", input_spec)
        total = sum(1 for _ in sources.list_sources(input_spec, schemes))
        if resume and not retry_rejects:
            total -= len(shards.done_source_ids(dataset) & {source.source_id_of(it)
                                                            for it in sources.list_sources(input_spec, schemes)})
    else:  # fail fast on an empty/missing input; a manifest is checked whole before its first record
        next(iter(sources.list_sources(input_spec, schemes)), None)
    with outlock.hold(dataset, "preprocess"):   # one run per dataset: its clean-up would delete a live run's files
        shards.claim_dataset(dataset, cfg_dict, new_version=new_version)
        shards.remove_stale_temporaries(dataset)
        folder = jobrun.progress_folder(is_local, progress)
        build(p, input_spec, dataset, cfg_dict, run_id=run_id, resume=resume, retry_rejects=retry_rejects,
              started=started, progress_dir=folder)
        bar = jobrun.Bar(folder, total, unit="video", desc="preprocess", stream=None,  # the summary counts kept ones
                         workers=options_mod.local_workers(p.options), frames_word="frames decoded") if folder else None
        result = jobrun.run(p, log_uri=uri_mod.join(dataset, "runs", run_id, "job.log"), is_local=is_local, bar=bar,
                            namespace=NS)
    return json.loads(uri_mod.read_bytes(summary_uri)), result


def main(args, beam_args) -> int:
    from pipelines.options import OptionsError

    try:
        summary = run(args.input, args.output, beam_args, config_path=args.config, overrides=args.overrides,
                      resume=args.resume, retry_rejects=args.retry_rejects, run_id=args.run_id,
                      progress=not args.no_progress, new_version=getattr(args, "new_version", False))
    except (sources.SourceError, config_mod.ConfigError, OptionsError) as e:
        print(f"radio preprocess: error: {e}", file=sys.stderr)  # one line, as radio.cli prints mistakes
        return 2
    print(format_summary(summary))
    if summary["sources_failed"]:
        print(f"radio preprocess: {summary['sources_failed']} source(s) failed on environment errors "
              f"(first: {summary['failures'][0]['source_uri']}: {summary['failures'][0]['error']}); "
              f"rerun with --resume to finish them", file=sys.stderr)
    return 0 if summary["counts_add_up"] and not summary["sources_failed"] else 1


def format_summary(s: dict) -> str:
    lines = [
        f"run {s['run_id']}: {s['inputs']} inputs = {s['sources_with_rows']} with rows + "
        f"{s['sources_rejected']} rejected + {s['sources_failed']} failed + {s['skipped_resume']} finished earlier"
        + ("" if s["counts_add_up"] else "  (DOES NOT ADD UP)"),
        f"  {s['segments']} segments, {s['frames']} frames, {s['segment_rejects']} segment rejects",
    ]
    if s["rejects_by_reason"]:
        lines.append("  rejects: " + ", ".join(f"{k} {v}" for k, v in sorted(s["rejects_by_reason"].items())))
    if s.get("redone_after_check"):
        lines.append(f"  {s['redone_after_check']} earlier source(s) redone: files missing or damaged, labels changed, "
                     "or another config")
    if s.get("replaced_earlier"):
        lines.append(f"  {s['replaced_earlier']} earlier source(s) removed: frames of a video this input lists "
                     "under another clip range (or whole)")
    if s["sources_failed"]:
        lines.append(f"  {s['sources_failed']} failed on environment errors (no space, I/O, network, killed): "
                     "not rejects; rerun with --resume")
    lines.append(f"  output: {s['dataset']}  (rows/, rejects/, summary.json)")
    return "\n".join(lines)
