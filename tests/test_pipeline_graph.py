"""The preprocess graph as Dataflow would get it, built and translated without submitting anything,
and the options checks that stop a Dataflow launch early with the fix."""
from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import (DebugOptions, DirectOptions, GoogleCloudOptions,
                                                  SetupOptions)

from pipelines import jobrun, options
from pipelines import preprocess as pipeline

REPO = Path(__file__).resolve().parents[1]
DATAFLOW = ["--runner", "DataflowRunner", "--project", "radio-test-project", "--region", "europe-west4",
            "--temp_location", "gs://radio-test-bucket/tmp", "--setup_file", str(REPO / "setup.py")]
STEPS = ["Spec", "ListSources", "KeyBySource", "Dataset", "ListFinished", "ListRows", "JoinFinished", "SkipFinished",
         "CountSkipped", "Reshuffle", "ProcessSource", "Summarise", "WriteSummary"]


def _applied(p: beam.Pipeline) -> dict:
    out = {}

    class Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node):
            out[node.full_label] = node

        def visit_transform(self, node):
            out[node.full_label] = node

    p.visit(Visitor())
    return out


def test_dataflow_graph_is_built_and_translated_without_submitting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = options.build(DATAFLOW + ["--dry_run=True"], job_name="radio-preprocess-test")
    assert not job.is_local and job.runner == "DataflowRunner"
    assert job.options.view_as(GoogleCloudOptions).job_name == "radio-preprocess-test"
    assert "use_runner_v2" in job.options.view_as(DebugOptions).experiments
    p = beam.Pipeline(runner=job.runner, options=job.options)
    from preprocess import config as config_mod
    from preprocess.source import PreprocessConfig

    cfg = config_mod.to_dict(PreprocessConfig())
    pipeline.build(p, "gs://radio-test-bucket/in/*.mp4", "gs://radio-test-bucket/ds", cfg, run_id="t",
                   resume=True, retry_rejects=False, started=0.0)
    nodes = _applied(p)
    assert [s for s in STEPS if s not in nodes] == []
    # videos are spread over workers after listing: ProcessSource reads the Reshuffle's output
    (pc,) = nodes["ProcessSource"].inputs
    assert pc.producer.full_label.startswith("Reshuffle")

    # --dry_run: the DataflowRunner translates the graph, stages the package and builds the job
    # request, then returns before talking to the service
    result = p.run()
    job_request = result.job
    assert job_request.proto.name == "radio-preprocess-test"
    top = {t.unique_name.split("/")[0] for t in job_request.proto_pipeline.components.transforms.values()}
    assert set(STEPS) <= top
    # the staged package (workflow.tar.gz, built from --setup_file) carries requirements.txt:
    # setup.py reads it on the workers for install_requires
    from apache_beam.portability.api import beam_runner_api_pb2 as api

    staged = {}
    for env in job_request.proto_pipeline.components.environments.values():
        for dep in env.dependencies:
            role = api.ArtifactStagingToRolePayload.FromString(dep.role_payload)
            staged[role.staged_name] = api.ArtifactFilePayload.FromString(dep.type_payload).path
    try:
        with tarfile.open(staged["workflow.tar.gz"]) as tar:
            names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        assert {"requirements.txt", "setup.py", "pipelines/preprocess.py", "preprocess/source.py"} <= names
    finally:
        shutil.rmtree(os.path.dirname(staged["workflow.tar.gz"]), ignore_errors=True)


def _without(flag: str) -> list[str]:
    i = DATAFLOW.index(flag)
    return DATAFLOW[:i] + DATAFLOW[i + 2:]


@pytest.mark.parametrize("flag", ["--project", "--region", "--temp_location", "--setup_file"])
def test_dataflow_options_missing_are_named(flag):
    with pytest.raises(options.OptionsError, match=f"DataflowRunner needs {flag}"):
        options.build(_without(flag), job_name="j")


def test_dataflow_accepts_a_container_image_instead_of_setup_file():
    job = options.build(_without("--setup_file") + ["--sdk_container_image", "eu.gcr.io/p/radio:1"], job_name="j")
    assert not job.is_local


def test_dataflow_accepts_an_extra_package_instead_of_setup_file():
    # an installed radio has no setup.py: its sdist/wheel shipped with Beam's --extra_package(s) is the third way
    for flag in ("--extra_package", "--extra_packages"):
        job = options.build(_without("--setup_file") + [flag, "dist/radio-0.1.0.tar.gz"], job_name="j")
        assert not job.is_local
        assert job.options.view_as(SetupOptions).extra_packages == ["dist/radio-0.1.0.tar.gz"]


def test_cli_reports_missing_dataflow_options(tmp_path, capsys):
    from radio import cli

    rc = cli.main(["preprocess", "--input", str(REPO / "tests" / "data" / "00015.mp4"),
                   "--output", str(tmp_path / "ds"), "--runner", "DataflowRunner", "--region", "r"])
    out = capsys.readouterr().err
    assert rc == 2 and "--project" in out and "--temp_location" in out and "--region" not in out


def test_local_runner_defaults():
    job = options.build([], job_name="j")
    direct = job.options.view_as(DirectOptions)
    assert job.is_local and direct.direct_num_workers == (os.cpu_count() or 1)
    assert job.options.view_as(SetupOptions).save_main_session is False
    one = options.build(["--direct_num_workers=1"], job_name="j").options.view_as(DirectOptions)
    assert (one.direct_num_workers, one.direct_running_mode) == (1, "in_memory")
    two = options.build(["--direct_num_workers=2"], job_name="j").options.view_as(DirectOptions)
    assert (two.direct_num_workers, two.direct_running_mode) == (2, "multi_processing")


class _ReportThreads(beam.DoFn):
    def __init__(self, folder: str):
        self.folder = folder

    def process(self, x):
        import json

        with open(os.path.join(self.folder, f"{os.getpid()}-{x}.json"), "w") as f:
            json.dump({v: os.environ.get(v) for v in jobrun.THREAD_VARS}, f)
        yield x


def test_local_workers_share_the_cores(tmp_path, monkeypatch):
    """Each of N local worker processes sizes its thread pools (torch/OpenMP, BLAS, OpenCV, dub's
    paste-back) to cores // N, not to the whole machine; a value the user set is kept; the launching
    process's environment is restored after the run."""
    import json

    for v in jobrun.THREAD_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("OPENCV_FOR_THREADS_NUM", "3")
    monkeypatch.setattr(jobrun, "available_cores", lambda: 8)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), str(REPO),
                                                      os.environ.get("PYTHONPATH", "")]))  # this DoFn
    job = options.build(["--direct_num_workers=2"], job_name="j")
    p = beam.Pipeline(runner=job.runner, options=job.options)
    _ = p | beam.Create([1, 2, 3, 4]) | beam.Reshuffle() | beam.ParDo(_ReportThreads(str(tmp_path)))
    jobrun.run(p, log_uri=str(tmp_path / "job.log"), is_local=True)
    seen = [json.loads(f.read_text()) for f in tmp_path.glob("*.json")]
    assert len(seen) == 4
    for env in seen:
        assert env == {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "4",
                       "OPENCV_FOR_THREADS_NUM": "3", "RADIO_WORKER_CORES": "4"}
    assert "OMP_NUM_THREADS" not in os.environ and os.environ["OPENCV_FOR_THREADS_NUM"] == "3"
