"""Beam pipeline: a per-source radio dataset -> a compacted one (``preprocess/compact.py``).

    Input -> List{Rows,Rejects} -> Plan -> Reshuffle -> WriteGroup -> Collect -> Finish

Only wiring here. Listing and planning run inside the job (no URI list is embedded in the graph,
so 10^6 input shards fit Dataflow's graph limit); each output file is written by one worker
(``compact.write_group``: atomic, deterministic name, skipped when an earlier run committed it);
the last step copies the metadata files, removes stale outputs and writes ``compact.json``.

    radio compact --input gs://B/datasets/vox2 --output gs://B/datasets/vox2-compact \\
        --set target_shard_mib=512 --runner DataflowRunner --project P --region R \\
        --temp_location gs://B/tmp --setup_file ./setup.py
"""
from __future__ import annotations

import json
import logging

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines import jobrun
from preprocess import compact, outlock, shards
from preprocess import config as config_mod
from preprocess import uri as uri_mod

log = logging.getLogger(__name__)
NS = "radio.compact"


class WriteGroupFn(beam.DoFn):
    def __init__(self, dataset: str, cfg_dict: dict):
        self.dataset, self.cfg_dict = dataset, cfg_dict
        self.written = Metrics.counter(NS, "files_written")
        self.skipped = Metrics.counter(NS, "files_skipped_existing")
        self.rows = Metrics.counter(NS, "rows")
        self.bad = Metrics.counter(NS, "bad_input_shards")

    def setup(self):
        self.cfg = config_mod.from_dict(compact.CompactConfig, self.cfg_dict)

    def process(self, group: compact.Group):
        result = compact.write_group(self.dataset, group, self.cfg)
        (self.skipped if result["skipped"] else self.written).inc()
        self.rows.inc(result["rows"])
        self.bad.inc(len(result["bad"]))
        yield result


def _plan(inputs: list, kind: str, target: float) -> list:
    return compact.plan(inputs, kind, target)


def build(p: beam.Pipeline, src: str, dst: str, cfg_dict: dict):
    target = cfg_dict["target_shard_mib"] * 2**20
    results = []
    for kind in (shards.ROWS, shards.REJECTS):
        results.append(
            p | f"Input{kind}" >> beam.Create([src])
              | f"List{kind}" >> beam.FlatMap(compact.list_inputs, kind)
              | f"Gather{kind}" >> beam.combiners.ToList()
              | f"Plan{kind}" >> beam.FlatMap(_plan, kind, target))
    cfg = config_mod.from_dict(compact.CompactConfig, cfg_dict)
    return ((results[0], results[1]) | "Groups" >> beam.Flatten()
            | "Reshuffle" >> beam.Reshuffle()
            | "WriteGroup" >> beam.ParDo(WriteGroupFn(dst, cfg_dict))
            | "Collect" >> beam.combiners.ToList()
            | "Finish" >> beam.Map(lambda rs: compact.finish(src, dst, rs, cfg)))


def run(src: str, dst: str, pipeline_args=(), *, config_path: str | None = None, overrides=(),
        test_pipeline: beam.Pipeline | None = None) -> dict:
    """Run the compaction and wait; returns compact.json's content."""
    from pipelines import options as options_mod

    cfg = config_mod.load(compact.CompactConfig, config_path, overrides)
    compact.check_paths(src, dst)
    if test_pipeline is not None:
        p, is_local = test_pipeline, True
    else:   # Beam options are checked before the output is touched (a --runner typo must not cost it its marker)
        job = options_mod.build(pipeline_args, job_name="radio-compact", reach=[("--input", src), ("--output", dst)])
        p, is_local = beam.Pipeline(runner=job.runner, options=job.options), job.is_local
    with outlock.hold(dst, "compact"):   # one run per output: its clean-up would delete a live run's files
        compact.check_earlier(src, dst, allow_fewer_inputs=cfg.allow_fewer_inputs)   # the first write: the run record
        fs_marker = uri_mod.join(dst, compact.MARKER)
        uri_mod.remove_if_exists(fs_marker)   # the output is in flux until the new marker
        shards.remove_stale_temporaries(dst)   # what killed runs left: $TMPDIR folders, .tmp-* uploads
        build(p, src, dst, config_mod.to_dict(cfg))
        jobrun.run(p, log_uri=uri_mod.join(dst, "runs", "compact", "job.log"), is_local=is_local, namespace=NS)
    return json.loads(uri_mod.read_bytes(fs_marker))


def main(args, beam_args) -> int:
    summary = run(args.input, args.output, beam_args, config_path=args.config, overrides=args.overrides)
    print(f"compact {summary['input']} -> {args.output}: {summary['input_shards']} shards -> "
          f"{summary['shards']} ({summary['rows']} rows, index under index/); {summary['input_reject_files']} "
          f"reject files -> {summary['reject_files']} ({summary['rejects']} rejects); copied {summary['copied']}")
    for uri, why in summary["bad_input_shards"]:
        print(f"  left out (bad shard): {uri}: {why}")
    return 1 if summary["bad_input_shards"] else 0
