"""Stopping on a preemption notice: SIGTERM (or Ctrl-C) -> finish the step -> checkpoint -> exit 143.

What sends the signal: a spot VM's shutdown (``infra/train/launch_vm.sh`` forwards it to torchrun),
torchrun's agent (on its own SIGTERM/SIGINT it signals each rank's whole process group, DataLoader
workers included, then SIGKILLs whatever is left 30 s later), a terminal's Ctrl-C.

- Loader workers ignore SIGTERM and SIGINT (``ignore_stop_signals``, their ``worker_init_fn``): a
  worker killed by the signal would make the rank raise "DataLoader worker ... killed by signal"
  before it could checkpoint. The rank stops its workers itself when it exits.
- Each rank's ``StopSignal`` turns the signal into a flag; after every step the ranks OR their flags
  (one int over a CPU gloo group, ``dist.any_flag``), so all of them stop after the same step even
  when only one was signalled, and write one checkpoint of that step. The signal's latency is thus
  the rest of the step plus the checkpoint's write (logged: "checkpoint written N s after the signal").
- A second Ctrl-C interrupts at once (KeyboardInterrupt, no checkpoint).
- Exit status of each rank: 0 when the run reached its last step, ``PREEMPTED`` (143, 128 + SIGTERM)
  when a signal stopped it after its checkpoint: run the same command again to resume. torchrun
  itself, signalled, exits 1 with "got signal: 15" after its ranks are done.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time

from . import dist

log = logging.getLogger("radio.train")

PREEMPTED = 143
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the worker ignores SIGTERM and SIGINT (its rank decides when to stop)."""
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class StopSignal:
    """SIGTERM / SIGINT -> a flag the training loop reads after each step (handlers are installed in
    the main thread only; elsewhere the flag stays False). ``since()`` is the seconds since the signal."""

    def __init__(self):
        self.flag = False
        self.name: str | None = None
        self._at: float | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in _SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.flag, self.name, self._at = True, signal.Signals(signum).name, time.monotonic()
        log.warning("%s received: checkpointing after this step", self.name)

    def checked(self) -> bool:
        """Whether to stop now: the flag OR-ed over the ranks (a collective under torchrun, every rank
        must call it at the same point; a CPU one, so it costs no GPU sync)."""
        return dist.any_flag(self.flag)

    def since(self) -> float | None:
        return None if self._at is None else time.monotonic() - self._at

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def stop_context(stop: StopSignal | None):
    """``stop`` as it is when the caller installed one, else a new ``StopSignal`` to install."""
    return contextlib.nullcontext(stop) if stop is not None else StopSignal()
