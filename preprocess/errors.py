"""The three kinds of failure (SPEC, "Failures"), as exception types every layer can raise.

- ``UserError``: a user's mistake (bad option, bad manifest line, output that is a file, missing
  weights) found *before any work*. The ``radio`` CLI prints its message as one line on stderr and
  exits 2; the full traceback only with ``-v``.
- Content errors are reject records (``preprocess.media.MediaError`` and friends), not exceptions
  that reach the CLI.
- Environment errors (no space, I/O, network, out of memory, a killed worker) propagate, so the
  runner retries the element; they are never recorded as rejects.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix, found before any work: one line, exit 2."""


class JobFailed(Exception):
    """A job that started and failed (an environment error or a bug, not a reject): its first
    error in one line plus the path of the log with the full traces. The CLI prints it, exit 1."""


class TemplateWritten(Exception):
    """The runner wrote the job's graph as a template (``--template_location``: what a Dataflow
    flex template's launcher asks for) and submitted no job: nothing to wait for, no summary to
    read yet. The CLI prints where, exit 0; the job runs when Dataflow launches it."""
