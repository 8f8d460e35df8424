"""Dataflow workers run on other machines: a path on this machine given to a Dataflow job is a
mistake found before any work (one line, exit 2), never a job whose workers write rows to their
own disks (thrown away with them) or cannot find the inputs and weights."""
from __future__ import annotations

from pathlib import Path

import fsspec
import pytest

from conftest import CLIP
from pipelines import options
from test_cli import assert_mistake

REPO = Path(__file__).resolve().parents[1]
DATAFLOW = ["--runner", "DataflowRunner", "--project", "radio-test-project", "--region", "europe-west4",
            "--temp_location", "gs://radio-test-bucket/tmp", "--setup_file", str(REPO / "setup.py")]


def test_preprocess_to_a_local_output_on_dataflow_is_refused(tmp_path, capsys):
    err = assert_mistake(["preprocess", "--input", str(CLIP), "--output", str(tmp_path / "ds"), *DATAFLOW],
                         capsys, tmp_path, says="--input")
    assert "Dataflow workers cannot reach" in err


def test_a_local_video_in_a_remote_manifest_on_dataflow_is_refused():
    with pytest.raises(options.OptionsError, match="a video of --input '/data/a.mp4' is a path on this machine"):
        options.build(DATAFLOW, job_name="j", reach=[("--input", "gs://b/m.csv"), ("--output", "gs://b/ds"),
                                                     ("a video of --input", "/data/a.mp4")])
    job = options.build(DATAFLOW, job_name="j", reach=[("--input", "gs://b/m.csv"), ("--output", "gs://b/ds"),
                                                       ("a video of --input", "gs://b/a.mp4"), ("--reference", None)])
    assert not job.is_local and not job.workers_see_local_files


def test_local_paths_are_fine_locally_and_with_a_container_image():
    assert options.build([], job_name="j", reach=[("--output", "/tmp/x")]).workers_see_local_files
    image = [a for a in DATAFLOW if a not in ("--setup_file", str(REPO / "setup.py"))]
    job = options.build(image + ["--sdk_container_image", "eu.gcr.io/p/radio:1"], job_name="j",
                        reach=[("--output", "gs://b/x")])
    assert job.workers_see_local_files


def test_evaluate_of_local_folders_on_dataflow_is_refused(tmp_path, capsys):
    assert_mistake(["evaluate", "--generated", str(REPO / "tests" / "data"), "--reference", str(REPO / "tests" / "data"),
                    "--output", str(tmp_path / "ev"), "--set", "lpips.enabled=false", "--set", "sync.enabled=false",
                    *DATAFLOW], capsys, tmp_path, says="is a path on this machine")


def test_evaluate_weights_on_this_machine_are_refused_for_workers_installed_from_setup_file(tmp_path):
    from eval.config import EvalConfig
    from eval.metrics.lpips import default_linear_uri
    from eval.models import check_weights
    from preprocess.weights import WeightsError

    if default_linear_uri() is None:
        pytest.fail("the test extra installs lpips (README); its linear weights are the default here")
    backbone = "memory://radio-test-reach/alexnet.pth"
    with fsspec.open(backbone, "wb") as f:
        f.write(b"stand-in: only its existence is checked here")
    cfg = EvalConfig()
    cfg.sync.enabled = False
    cfg.lpips.backbone_uri = backbone
    check_weights(cfg)                                  # locally: the lpips install's file is fine
    with pytest.raises(WeightsError, match=r"lpips.linear_uri\).*is a file on this machine"):
        check_weights(cfg, workers_see_local_files=False)
    cfg.lpips.linear_uri = "memory://radio-test-reach/alex.pth"
    with fsspec.open(cfg.lpips.linear_uri, "wb") as f:
        f.write(b"x")
    check_weights(cfg, workers_see_local_files=False)


def test_a_local_video_anywhere_in_a_manifest_is_refused_not_only_in_its_first_rows(tmp_path, capsys):
    """Only the first cpu_count rows were checked: a local path further down went to Dataflow."""
    import fsspec

    rows = [f"memory://radio-test-reach/v/{i}.mp4" for i in range(8)] + [str(CLIP)]
    for r in rows[:-1]:
        with fsspec.open(r, "wb") as f:
            f.write(b"x")
    with fsspec.open("memory://radio-test-reach/m.csv", "w") as f:
        f.write("uri\n" + "\n".join(rows) + "\n")
    from radio import cli

    rc = cli.main(["preprocess", "--input", "memory://radio-test-reach/m.csv", "--output", "memory://radio-test-reach/ds",
                   "--set", "input.schemes=[file, memory]", *DATAFLOW])
    err = capsys.readouterr().err
    assert rc == 2 and f"a video of --input '{CLIP}' is a path on this machine" in err, err


def test_a_local_input_with_a_bucket_output_is_refused_before_any_network_access(capsys):
    """The CLI's checks listed gs://…/out first: 85 s of retries, then an 'environment failure'."""
    import time

    from radio import cli

    t = time.monotonic()
    rc = cli.main(["preprocess", "--input", str(CLIP), "--output", "gs://radio-unreachable-test/out", *DATAFLOW])
    err = capsys.readouterr().err
    assert rc == 2 and "--input" in err and "path on this machine" in err, err
    assert time.monotonic() - t < 20
