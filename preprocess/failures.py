"""Environment failures: telling them from content errors, and retrying them.

A content error is a fact about the input (undecodable, no face, too short...): it becomes a
reject record and a done marker. An environment failure is a fact about the machine or the
network (no space, I/O error, quota, out of memory, connection refused, a timeout, a worker
process killed): retrying later can succeed, so it must never become a reject or a done marker.
``is_environment_error`` decides; ``call_with_retries`` retries such errors with backoff.
"""
from __future__ import annotations

import errno
import logging
import re
import time
from typing import Callable, Iterator, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

#: errnos of the machine, not of the file: no space, I/O, quota, memory, descriptors, network
ENV_ERRNOS = frozenset(getattr(errno, n) for n in (
    "ENOSPC", "EIO", "EDQUOT", "ENOMEM", "EROFS", "EMFILE", "ENFILE", "ENOBUFS", "EAGAIN", "EBUSY",
    "ESTALE", "ENOLCK", "EINTR", "EPIPE", "ETIMEDOUT", "ECONNRESET", "ECONNREFUSED", "ECONNABORTED",
    "EHOSTUNREACH", "EHOSTDOWN", "ENETUNREACH", "ENETDOWN", "ENETRESET", "EREMOTEIO", "ENOTCONN")
    if hasattr(errno, n))
#: HTTP statuses worth retrying (server errors, request timeout, too many requests)
RETRIABLE_HTTP = frozenset({408, 429, 500, 502, 503, 504})
_ERRNO_IN_TEXT = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)
#: torch's DataLoader on a worker process killed under it: SIGKILL (the kernel's OOM killer) or a bus
#: error (its shared memory, /dev/shm, full). Not "exited unexpectedly": a segfault reads so (a bug).
_LOADER_WORKER_DIED = re.compile(r"^DataLoader worker \(pid.*killed by signal: (Killed|Bus error)")
#: a rank's collective whose peer is gone (killed by the OOM killer, its machine lost): gloo's transport
#: says so in a plain RuntimeError; torch's own types are DistBackendError / DistNetworkError
_PEER_GONE = re.compile(r"gloo/transport/.*(Connection reset by peer|Connection closed by peer|Broken pipe)")


class EnvironmentFailure(Exception):
    """An environment failure raised by radio itself (a worker process killed by a signal, ...)."""


def raise_if_killed(returncode: int | None, what: str) -> None:
    """For callers of the ffmpeg/ffprobe CLIs: a child killed by SIGKILL (the kernel's OOM killer)
    or SIGTERM (a shutting-down machine) says nothing about the input: raise an environment failure
    instead of the caller's 'undecodable' reject."""
    import signal

    if returncode is not None and -returncode in (signal.SIGKILL, signal.SIGTERM):
        raise EnvironmentFailure(f"{what} was killed by {signal.Signals(-returncode).name} (out of memory?)")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 16:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def _errno_of(e: OSError) -> int | None:
    if e.errno is not None:
        return e.errno
    m = _ERRNO_IN_TEXT.search(str(e))  # pyarrow and friends put it in the text only, sometimes
    return int(m.group(1)) if m else None


def _is_env(e: BaseException) -> bool:
    if isinstance(e, (EnvironmentFailure, MemoryError, TimeoutError, ConnectionError)):
        return True
    try:
        import av

        if isinstance(e, av.error.FFmpegError):
            # FFmpeg reports some malformed files as EIO: only its ENOMEM is the machine's
            return isinstance(e, av.error.MemoryError)
    except ImportError:
        pass
    status = getattr(e, "status", None) if type(e).__module__.startswith("aiohttp") else None
    code = getattr(e, "code", None) if type(e).__name__ == "HttpError" else None  # gcsfs
    if isinstance(status, int) or isinstance(code, int):
        return (status or code) in RETRIABLE_HTTP
    module = type(e).__module__
    if module.startswith("aiohttp") and type(e).__name__.startswith(("ClientConnect", "ServerDisconnected",
                                                                      "ClientOS", "ServerTimeout",
                                                                      "ClientPayload")):
        return True
    if module.startswith("requests") and type(e).__name__ in ("ConnectionError", "Timeout", "ReadTimeout",
                                                              "ConnectTimeout", "ChunkedEncodingError"):
        return True
    if module.startswith("google.auth") and type(e).__name__ == "TransportError":
        return True
    if type(e).__name__ == "FSTimeoutError":  # fsspec's async timeout
        return True
    if isinstance(e, RuntimeError) and (_LOADER_WORKER_DIED.match(str(e)) or _PEER_GONE.search(str(e))):
        return True
    if module.startswith("torch") and type(e).__name__ in ("DistBackendError", "DistNetworkError"):
        return True
    if isinstance(e, OSError):
        return _errno_of(e) in ENV_ERRNOS
    return False


def is_environment_error(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is the machine's or the network's, not the input's."""
    return any(_is_env(e) for e in _chain(exc))


def describe(exc: BaseException) -> str:
    """One line: the exception and, when it wraps one, the environment error under it."""
    env = next((e for e in _chain(exc) if _is_env(e)), exc)
    text = f"{type(env).__name__}: {env}".splitlines()[0][:300]
    return text if env is exc else f"{type(exc).__name__} <- {text}"


def backoff_seconds(attempt: int, base_s: float, cap_s: float = 60.0) -> float:
    """Wait before attempt ``attempt`` (2, 3, ...): base, 2·base, 4·base... capped."""
    return min(cap_s, base_s * 2 ** (attempt - 2))


def call_with_retries(fn: Callable[[], T], *, attempts: int, backoff_s: float, what: str = "",
                      on_retry: Callable[[BaseException], None] | None = None,
                      sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``, retried on environment errors up to ``attempts`` times in all; other errors and
    the last environment error propagate."""
    for attempt in range(1, max(1, attempts) + 1):
        try:
            return fn()
        except Exception as e:
            if not is_environment_error(e) or attempt >= attempts:
                raise
            wait = backoff_seconds(attempt + 1, backoff_s)
            log.warning("%s: environment failure (%s), attempt %d of %d, retrying in %.1f s",
                        what, describe(e), attempt, attempts, wait)
            if on_retry is not None:
                on_retry(e)
            sleep(wait)
    raise AssertionError("unreachable")
