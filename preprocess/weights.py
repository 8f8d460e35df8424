"""Pretrained weights: resolve a configured URI to a verified local file.

Nothing is downloaded from a model hub. Every network is loaded from a URI given by config
(local path, gs://, any fsspec URI), copied to a local cache when remote, and checked against
its sha256 before use.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from dataclasses import dataclass

import fsspec

from preprocess import uri as uri_mod
from preprocess.errors import UserError


class WeightsError(UserError, RuntimeError):
    """A configured weight file is missing, unreadable or has the wrong hash."""


@dataclass(frozen=True)
class ResolvedWeights:
    path: str      # local file path, verified
    sha256: str    # hex digest of the file's bytes
    uri: str       # the configured URI


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _cache_dir() -> str:
    return os.environ.get("RADIO_WEIGHTS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "radio", "weights"))


_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
PART_MAX_AGE_S = 3600  # a download's .part not written to for this long belongs to a killed worker


def _sweep_parts(cache: str, max_age_s: float = PART_MAX_AGE_S) -> None:
    """Remove the ``.part`` files of downloads killed part-way (a live download keeps writing to
    its file, so its mtime stays fresh; a weight file takes seconds, not an hour, to copy)."""
    now = time.time()
    for name in os.listdir(cache):
        if name.endswith(".part"):
            p = os.path.join(cache, name)
            try:
                if now - os.stat(p).st_mtime > max_age_s:
                    os.unlink(p)
            except FileNotFoundError:  # another worker swept it first
                pass


def _cached_copy(fs, path: str, uri: str, sha256: str | None) -> tuple[str, str]:
    """``(local copy, its sha256)`` of a remote weight file, from the cache or fetched into it.

    With a configured sha256 the copy is stored under that digest: new weights at the same URI
    (with the config's new sha256) are fetched instead of failing on the old copy, and a cached
    copy whose bytes no longer match (damaged on disk) is fetched again. Without one the copy is
    keyed by the URI and fetched again when its size differs from the remote file's. A fetched
    file that does not match the configured sha256 is not kept."""
    cache = _cache_dir()
    os.makedirs(cache, exist_ok=True)
    _sweep_parts(cache)
    base = os.path.basename(path)
    want = sha256.lower() if sha256 else None
    key = want[:32] if want and _HEX64.fullmatch(want) else "uri-" + hashlib.sha256(uri.encode()).hexdigest()[:16]
    local = os.path.join(cache, f"{key}-{base}")
    if os.path.exists(local):
        digest = sha256_file(local)
        if (digest == want) if want else os.path.getsize(local) == fs.size(path):
            return local, digest
        os.unlink(local)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{base}.", suffix=".part")
    os.close(fd)
    try:
        fs.get_file(path, tmp)          # get() would expand [ ] * ? in the name
        digest = sha256_file(tmp)
        if want is None or digest == want:
            os.replace(tmp, local)
            return local, digest
        return tmp, digest          # reported as a mismatch by the caller; removed below
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def resolve_weights(uri: str | None, sha256: str | None, *, name: str, how_to_get: str,
                    allow_unverified: bool = False) -> ResolvedWeights:
    """Return a verified local copy of the weight file ``uri``.

    Raises WeightsError naming the file and how to get it when the URI is not configured, does
    not exist, or its sha256 differs from ``sha256``. ``allow_unverified`` accepts a missing
    ``sha256`` (the digest is still computed and returned, so reports can record it).
    """
    if not uri:
        raise WeightsError(f"{name}: no weight file configured. {how_to_get}")
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        raise WeightsError(f"{name}: weight file not found at {uri!r}. {how_to_get}")
    if uri_mod.is_local(uri):
        local = path
        digest = sha256_file(local)
    else:
        local, digest = _cached_copy(fs, path, uri, sha256)
    if sha256:
        if digest.lower() != sha256.lower():
            raise WeightsError(f"{name}: sha256 of {uri!r} is {digest}, expected {sha256}. "
                               f"The file changed since its sha256 was pinned, is corrupt or is not the expected "
                               f"release. {how_to_get}")
    elif not allow_unverified:
        raise WeightsError(f"{name}: no sha256 configured for {uri!r} (its sha256 is {digest}); "
                           "set it in the config to use this file.")
    return ResolvedWeights(path=local, sha256=digest, uri=uri)
