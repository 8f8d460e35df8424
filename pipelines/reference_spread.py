"""Beam wiring of ``eval.reference_spread``: score rows -> OUTPUT/runs/<run_id>/reference_spread.*

Used by ``pipelines/evaluate.py`` (one line in its graph): a CombineFn over the score rows, so
memory holds K × 4 floats per pair, whatever the number of rows, then one atomic write.
"""
from __future__ import annotations

import apache_beam as beam

from eval import reference_spread as core


class SpreadFn(beam.CombineFn):
    def create_accumulator(self):
        return core.create()

    def add_input(self, acc, row):
        return core.add(acc, row)

    def merge_accumulators(self, accs):
        return core.merge(accs)

    def extract_output(self, acc):
        return core.compute(acc)


class ReferenceSpread(beam.PTransform):
    """PCollection of score rows -> the spread result, written under ``out_dir``."""

    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir = out_dir

    def expand(self, rows):
        return (rows
                | "Combine" >> beam.CombineGlobally(SpreadFn())
                | "Write" >> beam.Map(lambda result, d: core.write(d, result), self.out_dir))
