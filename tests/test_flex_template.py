"""A Dataflow flex template's launcher runs `radio evaluate` (infra/dataflow/flex_evaluate.py) with
``--template_location``: Beam then writes the job graph there and submits no job (its result has
no job, state DONE). That is a success, exit 0, saying so — before, radio read the run's summary
at once and failed (FileNotFoundError traceback, exit 1), so no nightly launch ever ran."""
from __future__ import annotations

import sys
from pathlib import Path

from apache_beam.runners.runner import PipelineResult, PipelineRunner, PipelineState

REPO = Path(__file__).resolve().parents[1]


class _NoJob(PipelineResult):
    has_job = False          # as DataflowPipelineResult(None, …) after writing a template

    def __init__(self):
        super().__init__(PipelineState.DONE)

    def wait_until_finish(self, duration=None):
        return self.state


class TemplateRunner(PipelineRunner):
    """Stands in for DataflowRunner with --template_location (no service here): builds nothing remote."""
    ran = 0

    def run_pipeline(self, pipeline, options):
        TemplateRunner.ran += 1
        return _NoJob()


def test_a_flex_template_launch_writes_the_graph_and_exits_0(tmp_path, capsys, monkeypatch):
    sys.path.insert(0, str(REPO / "infra" / "dataflow"))
    monkeypatch.setattr(sys, "argv", ["flex_evaluate.py", f"--generated={REPO / 'tests' / 'data'}",
                                      f"--reference={REPO / 'tests' / 'data'}", f"--output={tmp_path / 'ev'}",
                                      "--run_id=nightly-1", "--set=lpips.enabled=false", "--set=sync.enabled=false",
                                      "--runner=test_flex_template.TemplateRunner",
                                      "--template_location=gs://radio-test/templates/launch/job_object"])
    import runpy

    try:
        runpy.run_path(str(REPO / "infra" / "dataflow" / "flex_evaluate.py"), run_name="__main__")
    except SystemExit as e:
        rc = e.code
    finally:
        sys.path.remove(str(REPO / "infra" / "dataflow"))
    out, err = capsys.readouterr()
    assert TemplateRunner.ran == 1
    assert rc == 0, err
    assert "job graph written to gs://radio-test/templates/launch/job_object" in out and "Traceback" not in err
