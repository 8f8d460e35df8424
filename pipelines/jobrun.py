"""Running a radio Beam job: progress while it runs, and a failure in one line with a log file.

Shared by ``preprocess``, ``dub`` and ``evaluate``:

- :class:`Tracked` wraps a pipeline's per-item DoFn. It delegates everything to it and adds two
  things: when an exception escapes ``process`` it logs which element failed (then re-raises it
  unchanged, so the runner retries it as before), and on local runs it writes the worker's
  running totals (items, frames) to a small progress folder after each element.
- :func:`run` starts the job and waits. Locally it shows a progress bar from those totals
  (items and frames done, rate, ETA; what is happening while the workers start); on other
  runners it logs the job's Beam counters every ``every`` seconds. Beam's own log records and the
  workers' stderr go to ``OUTPUT/runs/<run_id>/job.log`` (with ``-v``: to the console as well).
  When the job fails, :class:`preprocess.errors.JobFailed` carries one line: the first error's
  type, message, step and element, and the log file's path.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid
from contextlib import contextmanager
from typing import Callable

import apache_beam as beam

from preprocess import progress
from preprocess import uri as uri_mod
from preprocess.errors import JobFailed, TemplateWritten

log = logging.getLogger(__name__)
FAILED_MARK = "radio: element failed:"  # + the element, URL-quoted (survives the Fn API log escaping)


# ---- worker side ---------------------------------------------------------------------------------
class Tracked(beam.DoFn):
    """``fn`` with failures named by element and (locally) progress totals in ``progress_dir``.

    ``describe(element)`` names an element in one short string (its URI); ``frames(output)`` is the
    number of frames an output element stands for (0 for outputs that are not items, e.g. tagged
    rejects are counted through ``frames`` too when they carry ``frames``).
    """

    def __init__(self, fn: beam.DoFn, *, describe: Callable, frames: Callable, progress_dir: str | None):
        self.fn, self.describe, self.frames, self.progress_dir = fn, describe, frames, progress_dir

    def setup(self):
        self.fn.setup()
        self.items = self.n_frames = self.partial = self.expected = 0
        self._path, self._last = None, 0.0
        if self.progress_dir:
            self._path = os.path.join(self.progress_dir, f"{os.getpid()}-{uuid.uuid4().hex}.json")  # never reused
            self._report()  # this worker is ready

    def start_bundle(self):
        self.fn.start_bundle()

    def process(self, element):
        self.partial = self.expected = 0
        try:
            with progress.reporting(self._frames_done, expect=self._expect):
                outputs = list(self.fn.process(element) or ())
        except Exception:
            log.error("%s %s", FAILED_MARK, urllib.parse.quote(str(self.describe(element)), safe="/:"))
            raise
        done = sum(int(self.frames(out.value if isinstance(out, beam.pvalue.TaggedOutput) else out) or 0)
                   for out in outputs)
        self.n_frames += max(done, self.partial)   # never below what the bar already showed (a source
        self.items += 1                            # decodes more frames than its rows keep)
        self.partial = self.expected = 0
        self._report()
        yield from outputs

    def _expect(self, n: int) -> None:
        """The item in progress will take about ``n`` frames (``preprocess.progress.expect``)."""
        self.expected = int(n)
        self._report()

    def _frames_done(self, n: int) -> None:
        """Frames of the item in progress (``preprocess.progress.frames``), reported at most twice a second."""
        self.partial += n
        if time.monotonic() - self._last >= 0.5:
            self._report()

    def finish_bundle(self):
        return self.fn.finish_bundle()

    def teardown(self):
        self.fn.teardown()

    def _report(self):
        if self._path:
            tmp = self._path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"items": self.items, "frames": self.n_frames + self.partial,
                           "current": self.partial, "expected": self.expected}, f)
            os.replace(tmp, self._path)
            self._last = time.monotonic()


def frames_of(value) -> int:
    """Frames of an output dict: ``frames``, ``n_frames`` or ``row.n_frames``."""
    if not isinstance(value, dict):
        return 0
    if "row" in value and isinstance(value["row"], dict):
        value = value["row"]
    return int(value.get("frames") or value.get("n_frames") or 0)


def uri_of(element) -> str:
    if isinstance(element, dict):
        for k in ("uri", "generated", "key", "pair_id"):
            if element.get(k):
                return str(element[k])
    return repr(element)[:200]


def progress_folder(is_local: bool, progress: bool) -> str | None:
    """A fresh local folder the workers report to (None: no bar)."""
    return tempfile.mkdtemp(prefix="radio-progress-") if (is_local and progress) else None


# ---- main side -----------------------------------------------------------------------------------
class Bar:
    """Progress of a local job from the workers' reports: items and frames, rate, ETA."""

    def __init__(self, folder: str | None, total: int, *, unit: str, desc: str, stream, workers: int | None,
                 frames_word: str = "frames"):
        self.folder, self.total, self.unit, self.desc, self.stream = folder, total, unit, desc, stream
        self.workers, self.frames_word = workers, frames_word
        self.current = self.expected = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True) if folder else None

    def read(self) -> tuple[int, int, int]:
        """(workers ready, items done, frames done); ``self.current``/``self.expected``: frames done
        and expected of the items in progress that said how many they expect."""
        ready = items = frames = 0
        self.current = self.expected = 0
        for name in os.listdir(self.folder):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.folder, name)) as f:
                    d = json.load(f)
            except (OSError, ValueError):
                continue  # replaced while read: next tick
            ready += 1
            items += d["items"]
            frames += d["frames"]
            if d.get("expected"):
                self.current += d.get("current", 0)
                self.expected += d["expected"]
        return ready, items, frames

    def _run(self):
        from tqdm import tqdm

        t_ready, t_frame, last = None, None, 0
        with tqdm(total=self.total or None, unit=self.unit, desc=self.desc, file=self.stream,
                  dynamic_ncols=True, mininterval=1.0) as bar:
            while True:
                stop = self._stop.wait(1.0)
                ready, items, frames = self.read()
                bar.update(items - bar.n)
                if ready and t_ready is None:
                    t_ready = time.time()
                if frames != last:  # the rate is over the time frames were coming in
                    t_frame, last = time.time(), frames
                if items == 0 and frames == 0 and not stop and self.workers and ready >= self.workers:
                    bar.set_postfix_str(f"{ready} workers ready, first {self.unit} in progress")
                elif items == 0 and frames == 0 and not stop:
                    of = f"/{self.workers}" if self.workers else ""
                    bar.set_postfix_str(f"starting workers: {ready}{of} ready (models load once per worker)")
                else:
                    rate = frames / max((t_frame or 0) - (t_ready or 0), 1e-6) if t_frame and t_ready else 0.0
                    done = " - writing the summary" if self.total and items >= self.total and not stop else ""
                    bar.set_postfix_str(f"{frames} {self.frames_word}, {rate:.1f} frames/s{done}"
                                        + (self._eta(rate) if self.total == 1 and not done else ""))
                if stop:
                    break

    def _eta(self, rate: float) -> str:
        """For a job of one item (one long video or pair): its expected frames and time left."""
        if not self.expected or rate <= 0:
            return ""
        left = max(self.expected - self.current, 0) / rate
        return f" (item: {self.current} of ~{self.expected}, about {int(left // 60)}:{int(left % 60):02d} left)"

    def __enter__(self):
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)


def _log_counters(result, namespace: str) -> None:
    from apache_beam.metrics.metric import MetricsFilter

    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]
    except Exception as e:  # metrics are best effort on some runners
        log.debug("no counters yet: %s", e)
        return
    totals: dict[str, int] = {}
    for c in counters:
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + (c.committed or c.attempted or 0)
    if totals:
        log.info("%s: %s", namespace, ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))


class _DropBeam(logging.Filter):
    def filter(self, record):
        return not record.name.startswith(("apache_beam", "absl"))


@contextmanager
def job_log(log_uri: str, *, capture: bool):
    """Beam's log records go to ``log_uri``; with ``capture`` they leave the console, and so does
    whatever the worker subprocesses print on stderr (they inherit fd 2, pointed at the log while
    the job runs). Yields the console stream for progress output and the open log file."""
    local = log_uri if uri_mod.is_local(log_uri) else os.path.join(tempfile.mkdtemp(prefix="radio-log-"), "job.log")
    os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
    f = open(local, "a", buffering=1, encoding="utf-8", errors="replace")
    fh = logging.StreamHandler(f)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(fh)
    old_stderr, console, saved_fd = sys.stderr, sys.stderr, None
    filtered, swapped = [], []
    if capture:
        for h in root.handlers:
            if h is not fh and isinstance(h, logging.StreamHandler):
                flt = _DropBeam()
                h.addFilter(flt)
                filtered.append((h, flt))
        try:
            old_stderr.flush()
            saved_fd = os.dup(2)
        except (OSError, ValueError):
            saved_fd = None
        if saved_fd is not None:
            if old_stderr is sys.__stderr__:  # the real stderr: keep the console through a copy of fd 2
                console = os.fdopen(os.dup(saved_fd), "w", buffering=1)
                for h, _ in filtered:
                    if h.stream is old_stderr:
                        swapped.append((h, h.setStream(console)))
                sys.stderr = console
            os.dup2(f.fileno(), 2)
    try:
        yield console, f
    finally:
        if saved_fd is not None:
            console.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            for h, stream in swapped:
                h.setStream(stream)
            sys.stderr = old_stderr
            if console is not old_stderr:
                console.close()
        for h, flt in filtered:
            h.removeFilter(flt)
        root.removeHandler(fh)
        f.close()
        if local != log_uri:
            with open(local, "rb") as src:
                uri_mod.write_bytes_atomic(log_uri, src.read())


_STEP = re.compile(r" \[while running '([^']+)'\]")
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Failure|Full|Empty)): (.*)$")


def first_error(exc: BaseException, log_text: str) -> str:
    """``Type: message [step 'S'] on ELEMENT`` of the first error of a failed job."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    found = [m for ln in lines if (m := _EXC_LINE.match(ln))]
    if found:
        etype, msg = found[-1].group(1), found[-1].group(2)
    else:
        etype, msg = type(exc).__name__, (lines[-1] if lines else "")
    inner = _EXC_LINE.match(msg)
    if etype.endswith("RuntimeError") and inner:  # Beam re-raises as RuntimeError("Type: message")
        etype, msg = inner.group(1), inner.group(2)
    step = _STEP.search(msg) or _STEP.search(text)   # a worker's child error: the step on its own line
    msg = _STEP.sub("", msg).strip()
    where = f" in step {step.group(1)}" if step else ""
    m = re.search(re.escape(FAILED_MARK) + r" ([^\s\"']+)", log_text)
    element = f" on {urllib.parse.unquote(m.group(1))}" if m else ""
    return f"{etype}: {msg}{where}{element}"


#: thread pools sized from the environment: torch/OpenMP, BLAS, OpenCV, and radio's own (dub paste-back)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENCV_FOR_THREADS_NUM",
               "RADIO_WORKER_CORES")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under taskset/cpusets), else all."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextmanager
def worker_threads(p: beam.Pipeline):
    """A local run with N worker processes gives each cores // N threads (torch, BLAS, OpenCV, dub's
    paste-back pool): otherwise each sizes its pools to the whole machine, N x cores threads in all
    (OpenMP's spinning threads then fight over cores). Values the user set are kept; the worker
    processes inherit them from this one's environment, restored afterwards."""
    from apache_beam.options.pipeline_options import DirectOptions

    direct = p.options.view_as(DirectOptions)
    n = int(direct.direct_num_workers or 1) if direct.direct_running_mode == "multi_processing" else 1
    if n <= 1:
        yield
        return
    share = str(max(1, available_cores() // n))
    saved = {v: os.environ.get(v) for v in THREAD_VARS}
    for v in THREAD_VARS:
        os.environ.setdefault(v, share)
    try:
        yield
    finally:
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old


def remote_job_id(result) -> str:
    """The runner's id of a submitted job (Dataflow's job id), for the user to cancel or watch it."""
    job_id = getattr(result, "job_id", None)
    try:
        return str(job_id() if callable(job_id) else job_id or result)
    except Exception:  # noqa: BLE001  (a result without an id still names itself)
        return str(result)


def run(p: beam.Pipeline, *, log_uri: str, is_local: bool, bar: Bar | None = None, namespace: str = "radio",
        verbose: bool | None = None, every: float = 30.0):
    """Run ``p`` and wait; returns the ``PipelineResult``. Raises ``JobFailed`` (one line) when the
    job fails; the full traces are in ``log_uri``."""
    if verbose is None:
        verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    with job_log(log_uri, capture=is_local and not verbose) as (console, log_file):
        if bar is not None:
            bar.stream = console
        try:
            with bar if bar is not None else _nothing(), worker_threads(p) if is_local else _nothing():
                result = p.run()
                if not is_local and getattr(result, "has_job", True) is False:   # a template, not a job
                    from apache_beam.options.pipeline_options import GoogleCloudOptions

                    where = p.options.view_as(GoogleCloudOptions).template_location
                    raise TemplateWritten(f"job graph written to {where}; no job was submitted here "
                                          "(--template_location): it runs when Dataflow launches it")
                if is_local:
                    result.wait_until_finish()
                else:  # e.g. Dataflow: the job's counters every `every` seconds, then the final ones
                    try:
                        while True:
                            result.wait_until_finish(duration=int(every * 1000))
                            if _terminal(result):
                                break
                            _log_counters(result, namespace)
                    except KeyboardInterrupt as e:   # Ctrl-C stops the waiting, not the job on the service
                        e.remote_job = remote_job_id(result)
                        raise
                    _log_counters(result, namespace)
        except TemplateWritten:
            raise
        except Exception as e:  # the job failed: its worker traces are in the log
            stop = interrupt_in(e)
            if stop is not None:  # Ctrl-C/SIGTERM raised inside a DoFn run in this process, wrapped by Beam
                log_file.write("stopped by a signal:\n" + "".join(traceback.format_exception(e)))
                raise stop from None
            log_file.write("job failed:\n" + "".join(traceback.format_exception(e)))
            failure = e
        else:
            failure = None
    if failure is not None:
        text = ""
        if uri_mod.is_local(log_uri) and os.path.exists(log_uri):
            with open(log_uri, encoding="utf-8", errors="replace") as f:
                text = f.read()
        raise JobFailed(f"{first_error(failure, text)} (full traces: {log_uri})") from failure
    return result


def interrupt_in(e: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C / SIGTERM (``radio.cli.Interrupted``) behind ``e``, if any. A job run in this
    process (one input, or ``--direct_num_workers=1``) gets the signal inside a DoFn, and Beam
    re-raises it as ``RuntimeError: radio.cli.Interrupted: 2 [while running 'ProcessSource']``,
    which was reported as a failed job (exit 1) instead of a stop (130 / 143)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _terminal(result) -> bool:
    from apache_beam.runners.runner import PipelineState

    return PipelineState.is_terminal(result.state)


@contextmanager
def _nothing():
    yield
