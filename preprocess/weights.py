"""Pretrained weights: resolve a configured URI to a verified local file.

Nothing is downloaded from a model hub. Every network is loaded from a URI given by config
(local path, gs://, any fsspec URI), copied to a local cache when remote, and checked against
its sha256 before use.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass

import fsspec

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
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        local = path
    else:
        os.makedirs(_cache_dir(), exist_ok=True)
        key = hashlib.sha256(uri.encode()).hexdigest()[:16] + "-" + os.path.basename(path)
        local = os.path.join(_cache_dir(), key)
        if not os.path.exists(local):
            fd, tmp = tempfile.mkstemp(dir=_cache_dir(), suffix=".part")
            os.close(fd)
            try:
                fs.get(path, tmp)
                os.replace(tmp, local)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    digest = sha256_file(local)
    if sha256:
        if digest.lower() != sha256.lower():
            raise WeightsError(f"{name}: sha256 of {uri!r} is {digest}, expected {sha256}. "
                               f"The file is corrupt or not the expected release. {how_to_get}")
    elif not allow_unverified:
        raise WeightsError(f"{name}: no sha256 configured for {uri!r} (its sha256 is {digest}); "
                           "set it in the config to use this file.")
    return ResolvedWeights(path=local, sha256=digest, uri=uri)
