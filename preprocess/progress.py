"""Frames done inside one long item (one 1080p pair takes a minute to dub), for progress bars.

Per-clip code calls :func:`frames` as it goes; a pipeline wrapper (``pipelines.jobrun.Tracked``)
decides where the counts go with :func:`reporting`. Without one, :func:`frames` does nothing.
No Beam here: per-clip code may import it.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable

_local = threading.local()


def frames(n: int = 1) -> None:
    """``n`` more frames of the current item are done."""
    sink = getattr(_local, "sink", None)
    if sink is not None:
        sink(n)


def expect(n: int) -> None:
    """The current item will take about ``n`` frames (known from its probe): a bar can show a total
    and an ETA for a long item."""
    sink = getattr(_local, "expect", None)
    if sink is not None:
        sink(n)


def beat() -> None:
    """Still working, no frame finished (a long copy, a stage starting): keeps a watchdog quiet."""
    frames(0)


@contextmanager
def reporting(sink: Callable[[int], None], expect: Callable[[int], None] | None = None):
    """While the block runs (in this thread), :func:`frames` calls ``sink`` and :func:`expect`
    calls ``expect``."""
    prev = getattr(_local, "sink", None), getattr(_local, "expect", None)
    _local.sink, _local.expect = sink, expect
    try:
        yield
    finally:
        _local.sink, _local.expect = prev
