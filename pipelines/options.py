"""The one place Beam options are built for every radio pipeline.

Job arguments (``--input``, ``--output``, …) are parsed by the ``radio`` CLI; everything else on
the command line passes through unchanged to Beam (``--runner``, ``--project``, ``--region``,
``--temp_location``, ``--setup_file``, ``--sdk_container_image``, …).

Local default: Beam's portable FnApiRunner in multi-process mode, one worker per core. We build
that runner ourselves rather than naming ``DirectRunner``: in Beam 2.6x+ ``DirectRunner`` first
tries the Prism runner, which downloads a Go binary from GitHub on every run (and fails offline
after a long wait) before falling back.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

from apache_beam.options.pipeline_options import (DebugOptions, DirectOptions, GoogleCloudOptions,
                                                  PipelineOptions, SetupOptions, StandardOptions,
                                                  WorkerOptions)

from preprocess.errors import UserError

REMOTE_RUNNERS = {"DataflowRunner", "dataflowrunner", "dataflow"}
LOCAL_RUNNERS = {None, "", "DirectRunner", "directrunner", "direct", "FnApiRunner", "local"}


class OptionsError(UserError, ValueError):
    pass


@dataclass
class BeamJob:
    options: PipelineOptions
    runner: object  # a runner instance (local) or the runner name (remote)
    is_local: bool

    @property
    def workers_see_local_files(self) -> bool:
        """Whether a path on this machine may be given to the workers: local runs, and Dataflow
        workers of a container image (the image may hold it; radio cannot check). Workers that
        install radio from --setup_file / --extra_package have none of this machine's files."""
        return self.is_local or bool(self.options.view_as(WorkerOptions).sdk_container_image)


def build(pipeline_args: Sequence[str], *, job_name: str, workers: int | None = None,
          reach: Iterable[tuple[str, str | None]] = ()) -> BeamJob:
    """Pipeline options + runner for ``pipeline_args`` (the CLI's unparsed arguments).

    ``reach``: ``(what, uri)`` of every location the job's workers read or write (``--output``,
    every input a manifest lists, …); on a remote runner each must be one they can reach
    (:func:`check_reachable`). It may be a lazy iterable: only a remote runner's check reads it."""
    opts = PipelineOptions(list(pipeline_args))
    std = opts.view_as(StandardOptions)
    runner_name = std.runner
    if runner_name in LOCAL_RUNNERS:
        direct = opts.view_as(DirectOptions)
        if not any(a.startswith("--direct_num_workers") for a in pipeline_args):
            direct.direct_num_workers = workers or os.cpu_count() or 1
        if direct.direct_running_mode in (None, "in_memory") and direct.direct_num_workers > 1:
            direct.direct_running_mode = "multi_processing"
        if direct.direct_num_workers <= 1:
            direct.direct_running_mode = "in_memory"
        # workers are separate processes: the main session is not pickled, our code is importable
        opts.view_as(SetupOptions).save_main_session = False
        pin_worker_imports()
        from apache_beam.runners.portability.fn_api_runner import fn_runner

        return BeamJob(options=opts, runner=fn_runner.FnApiRunner(), is_local=True)
    if runner_name in REMOTE_RUNNERS:
        check_dataflow(opts, job_name)
        check_reachable(reach)
    else:
        check_runner(runner_name)
    return BeamJob(options=opts, runner=runner_name, is_local=False)


def pin_worker_imports() -> None:
    """Local worker processes import radio's code from where this process did, whatever folder
    the command runs in. Beam starts them with ``python -m …`` (and preprocess its decode child),
    which puts the current folder first on ``sys.path``: a ``preprocess.py``, ``eval/`` or old
    checkout there replaced radio's code in the workers (other scores, no warning).
    ``PYTHONSAFEPATH=1`` (read by each new interpreter) drops that entry; a checkout run without
    an install (its folder on ``sys.path`` explicitly) is put on ``PYTHONPATH`` instead."""
    import site
    import sys

    os.environ["PYTHONSAFEPATH"] = "1"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds radio/, preprocess/, …
    site_dirs = {os.path.abspath(d) for d in [*site.getsitepackages(), site.getusersitepackages()]}
    if root in site_dirs or root not in {os.path.abspath(p or ".") for p in sys.path}:
        return  # installed (wheel or editable): every interpreter of this venv finds it
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in (os.path.abspath(p) for p in parts):
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *parts])


def check_reachable_early(pipeline_args: Sequence[str], reach: Iterable[tuple[str, str | None]]) -> None:
    """:func:`check_reachable` on the command line's own locations when ``pipeline_args`` name a
    remote runner: run by the CLI before its checks touch any remote location (a local --input
    with a gs:// --output was an 85 s network failure instead of this one line)."""
    opts = PipelineOptions(list(pipeline_args))
    if opts.view_as(StandardOptions).runner in REMOTE_RUNNERS:
        check_dataflow(opts, "radio")     # a missing --project etc. first (on a copy of the options)
        check_reachable(reach)


def check_reachable(reach: Iterable[tuple[str, str | None]]) -> None:
    """OptionsError unless every location is one Dataflow workers can reach: a path on this
    machine would be read from (or written to, then thrown away with) each worker's own disk."""
    from preprocess import uri as uri_mod

    for what, uri in reach:
        if uri and uri_mod.is_local(uri):
            raise OptionsError(f"{what} {uri!r} is a path on this machine, which Dataflow workers cannot reach: "
                               "use a gs:// URI.")


def check_runner(name: str) -> None:
    """A runner Beam knows by name, or a dotted path to a PipelineRunner class (a typo fails here
    in one line, not as Beam's traceback after the job's checks)."""
    import difflib

    if "." in name:
        return
    known = sorted(set(StandardOptions.KNOWN_RUNNER_NAMES) | {"DirectRunner", "DataflowRunner"})
    lowered = {k.lower(): k for k in known}
    if name.lower() in lowered or name.lower() + "runner" in lowered:
        return
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise OptionsError(f"--runner {name!r}: no such Beam runner; {hint}(radio runs DirectRunner locally by default, "
                       "DataflowRunner for scale).")


def check_dataflow(opts: PipelineOptions, job_name: str) -> None:
    """Fail early, with the fix, on the Dataflow options people forget."""
    gcp = opts.view_as(GoogleCloudOptions)
    setup = opts.view_as(SetupOptions)
    worker = opts.view_as(WorkerOptions)
    missing = []
    if not gcp.project:
        missing.append("--project")
    if not gcp.region:
        missing.append("--region")
    if not gcp.temp_location:
        missing.append("--temp_location gs://BUCKET/tmp")
    if not (setup.setup_file or setup.extra_packages or worker.sdk_container_image):
        missing.append("--setup_file ./setup.py, --extra_package dist/radio-VERSION.tar.gz "
                       "or --sdk_container_image IMAGE (see infra/)")
    if missing:
        raise OptionsError("DataflowRunner needs " + ", ".join(missing) + ".")
    if not gcp.job_name:
        gcp.job_name = job_name
    debug = opts.view_as(DebugOptions)
    debug.add_experiment("use_runner_v2")


def local_workers(opts: PipelineOptions) -> int:
    """Worker processes of a local run (what ``build`` chose, or ``--direct_num_workers``)."""
    return int(opts.view_as(DirectOptions).direct_num_workers or 1)
