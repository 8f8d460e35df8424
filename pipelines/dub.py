"""Beam pipeline: bulk dubbing of (video, speech) pairs with a trained RADIO checkpoint.

    ListPairs -> [SkipFinished] -> Reshuffle -> DubPair -> Summarise -> WriteSummary

Input: a manifest (.csv / .jsonl) with ``uri`` (video), ``audio_uri`` (speech) and optionally
``name`` (relative output name, checked: no '..', no absolute path). Output folder:

    OUTPUT/videos/<name or pair_id>.mp4   dubbed videos (written atomically)
    OUTPUT/done/<pair_id>.json            one result per pair (status, frames, fps, or the reject)
    OUTPUT/runs/<run_id>/summary.json     counts that add up: pairs = dubbed + rejected + skipped

The checkpoint and landmark backend load once per worker (``setup``), on the GPU when the worker
has one. Per-pair work is ``radio.dub.dub_uris``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import sys
import time
import traceback
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines import jobrun
from preprocess import config as config_mod
from preprocess import sources
from preprocess import uri as uri_mod
from radio.dub import DubConfig, DubError

log = logging.getLogger(__name__)
NS = "radio.dub"


@dataclass
class DubJobConfig:
    dub: DubConfig = field(default_factory=DubConfig)
    checkpoint_sha256: str | None = None        # sha256 of --checkpoint (sha256sum RUN/radio.pt)
    allow_unverified_checkpoint: bool = False   # accept a checkpoint without a pinned sha256
    device: str = "auto"                        # auto | cpu | cuda


def pair_id(item: dict) -> str:
    return hashlib.sha1(f"{item['uri']}\n{item.get('audio_uri')}".encode()).hexdigest()[:16]


def output_uri(output: str, item: dict) -> str:
    name = item.get("name") or f"{pair_id(item)}.mp4"
    if not name.endswith(".mp4"):
        name += ".mp4"
    return uri_mod.join(output, "videos", name)


class DubPairFn(beam.DoFn):
    def __init__(self, checkpoint: str, cfg: dict, output: str):
        self.checkpoint, self.cfg_dict, self.output = checkpoint, cfg, output
        self.dubbed = Metrics.counter(NS, "pairs_dubbed")
        self.rejected = Metrics.counter(NS, "pairs_rejected")
        self.frames = Metrics.counter(NS, "frames")

    def setup(self):
        import torch

        from preprocess.landmarks import get_backend
        from radio.train.checkpoint import load_generator

        self.cfg = config_mod.from_dict(DubJobConfig, self.cfg_dict)
        dev = self.cfg.device
        self.device = torch.device("cuda" if dev == "auto" and torch.cuda.is_available() else
                                   ("cpu" if dev == "auto" else dev))
        self.model = load_generator(self.checkpoint, self.cfg.checkpoint_sha256,
                                    allow_unverified=self.cfg.allow_unverified_checkpoint).to(self.device)
        self.backend = get_backend(self.cfg.dub.landmark_backend, **self.cfg.dub.landmark_args)

    def process(self, item: dict):
        from radio.dub import dub_uris

        pid = pair_id(item)
        result = {"pair_id": pid, "uri": item["uri"], "audio_uri": item.get("audio_uri")}
        try:
            if not item.get("audio_uri"):
                raise DubError("input", "no_audio_uri", "manifest row has no audio_uri")
            out = output_uri(self.output, item)
            stats = dub_uris(item["uri"], item["audio_uri"], out, self.model, self.backend, self.cfg.dub,
                             self.device)
            result.update(status="dubbed", output=out, **stats)
            self.dubbed.inc()
            self.frames.inc(stats["frames"])
        except Exception as e:  # per-pair boundary: a typed reject, the job goes on
            stage = getattr(e, "stage", "internal")
            reason = getattr(e, "reason", "internal_error")
            if not isinstance(e, DubError) and not hasattr(e, "reason"):
                log.exception("dubbing failed on %s", item["uri"])
            result.update(status="rejected", stage=stage, reason=reason, error_type=type(e).__name__,
                          message=traceback.format_exception_only(type(e), e)[-1].strip()[:2000])
            self.rejected.inc()
            Metrics.counter(NS, f"rejects_{reason}").inc()
        uri_mod.write_bytes_atomic(uri_mod.join(self.output, "done", f"{pid}.json"),
                                   json.dumps(result, sort_keys=True).encode())
        yield result


class _Count(beam.CombineFn):
    def create_accumulator(self):
        return {"dubbed": 0, "rejected": 0, "frames": 0, "rejects_by_reason": {}}

    def add_input(self, acc, r):
        acc[r["status"]] += 1
        acc["frames"] += r.get("frames", 0)
        if r["status"] == "rejected":
            acc["rejects_by_reason"][r["reason"]] = acc["rejects_by_reason"].get(r["reason"], 0) + 1
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for a in accs:
            for k in ("dubbed", "rejected", "frames"):
                out[k] += a[k]
            for k, v in a["rejects_by_reason"].items():
                out["rejects_by_reason"][k] = out["rejects_by_reason"].get(k, 0) + v
        return out

    def extract_output(self, acc):
        return acc


def _not_done(item: dict, output: str, resume: bool) -> bool:
    return not (resume and uri_mod.exists(uri_mod.join(output, "done", f"{pair_id(item)}.json")))


def build(p, manifest: str, checkpoint: str, output: str, cfg: dict, *, run_id: str, resume: bool, started: float,
          progress_dir: str | None = None):
    items = (p | "Manifest" >> beam.Create([manifest])
               | "ListPairs" >> beam.FlatMap(sources.read_manifest, key=("uri", "audio_uri")))
    listed = items | "CountListed" >> beam.combiners.Count.Globally()
    acc = (items
           | "SkipFinished" >> beam.Filter(_not_done, output, resume)
           | "Reshuffle" >> beam.Reshuffle()
           | "DubPair" >> beam.ParDo(jobrun.Tracked(DubPairFn(checkpoint, cfg, output), describe=jobrun.uri_of,
                                                    frames=jobrun.frames_of, progress_dir=progress_dir))
           | "Summarise" >> beam.CombineGlobally(_Count()))

    def write(a, n_listed):
        s = dict(a, run_id=run_id, pairs=n_listed, skipped_resume=n_listed - a["dubbed"] - a["rejected"],
                 output=output, checkpoint=checkpoint, wall_seconds=round(time.time() - started, 2))
        data = json.dumps(s, indent=2, sort_keys=True).encode()
        uri_mod.write_bytes_atomic(uri_mod.join(output, "runs", run_id, "summary.json"), data)
        uri_mod.write_bytes_atomic(uri_mod.join(output, "summary.json"), data)
        return s

    return acc | "WriteSummary" >> beam.Map(write, n_listed=beam.pvalue.AsSingleton(listed))


def run(manifest: str, checkpoint: str, output: str, pipeline_args=(), *, config_path=None, overrides=(),
        run_id: str | None = None, resume: bool = True, progress: bool = False, test_pipeline=None) -> dict:
    from pipelines import options as options_mod

    started = time.time()
    cfg = config_mod.to_dict(config_mod.load(DubJobConfig, config_path, overrides))
    run_id = run_id or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    summary_uri = uri_mod.join(output, "runs", run_id, "summary.json")
    if not sources.is_manifest(manifest):
        raise sources.SourceError(f"Expected a .csv/.jsonl manifest with uri,audio_uri. Got {manifest!r}.")
    if test_pipeline is not None:
        p, is_local = test_pipeline, True
    else:
        job = options_mod.build(pipeline_args, job_name=f"radio-dub-{run_id.lower()}")
        p, is_local = beam.Pipeline(runner=job.runner, options=job.options), job.is_local
    folder = jobrun.progress_folder(is_local, progress)
    build(p, manifest, checkpoint, output, cfg, run_id=run_id, resume=resume, started=started, progress_dir=folder)
    bar = None
    if folder:
        todo = [it for it in sources.read_manifest(manifest, key=("uri", "audio_uri")) if _not_done(it, output, resume)]
        bar = jobrun.Bar(folder, len(todo), unit="pair", desc="dub", stream=None,
                         workers=options_mod.local_workers(p.options))
    jobrun.run(p, log_uri=uri_mod.join(output, "runs", run_id, "job.log"), is_local=is_local, bar=bar, namespace=NS)
    return json.loads(uri_mod.read_bytes(summary_uri))


def main(args, beam_args) -> int:
    try:
        s = run(args.input, args.checkpoint, args.output, beam_args, config_path=args.config,
                overrides=args.overrides, run_id=args.run_id, progress=not getattr(args, "no_progress", False))
    except (sources.SourceError, config_mod.ConfigError) as e:
        print(f"radio dub: error: {e}", file=sys.stderr)  # one line, as radio.cli prints mistakes
        return 2
    print(f"run {s['run_id']}: {s['pairs']} pairs = {s['dubbed']} dubbed + {s['rejected']} rejected + "
          f"{s['skipped_resume']} finished earlier; {s['frames']} frames")
    if s["rejects_by_reason"]:
        print("  rejects: " + ", ".join(f"{k} {v}" for k, v in sorted(s["rejects_by_reason"].items())))
    print(f"  videos: {uri_mod.join(s['output'], 'videos')}")
    return 0
