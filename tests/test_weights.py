"""Weight files from a remote URI: the local cache (``memory://`` stands in for a bucket)."""
from __future__ import annotations

import hashlib
import os
import time

import fsspec
import pytest

from preprocess import weights


def _put(uri: str, data: bytes) -> str:
    with fsspec.open(uri, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("RADIO_WEIGHTS_CACHE", str(d))
    return d


def _resolve(uri, sha, **kw):
    return weights.resolve_weights(uri, sha, name="test net", how_to_get="put it there.", **kw)


def test_new_weights_at_the_same_uri_are_fetched_when_the_config_names_their_digest(cache):
    uri = "memory://radio-test-weights/a/net.pth"
    old = _put(uri, b"old weights")
    first = _resolve(uri, old)
    assert open(first.path, "rb").read() == b"old weights" and first.sha256 == old
    new = _put(uri, b"new weights, longer")
    second = _resolve(uri, new)    # before: the cached old copy -> "sha256 ... is <old>, expected <new>"
    assert open(second.path, "rb").read() == b"new weights, longer" and second.sha256 == new
    assert open(_resolve(uri, old).path, "rb").read() == b"old weights"  # the copy a config naming the old digest asks for


def test_a_damaged_cached_copy_is_fetched_again(cache):
    uri = "memory://radio-test-weights/b/net.pth"
    sha = _put(uri, b"good bytes")
    path = _resolve(uri, sha).path
    with open(path, "wb") as f:
        f.write(b"disk went bad")
    again = _resolve(uri, sha)
    assert open(again.path, "rb").read() == b"good bytes"


def test_a_wrong_remote_file_is_an_error_and_leaves_nothing_in_the_cache(cache):
    uri = "memory://radio-test-weights/c/net.pth"
    _put(uri, b"some other release")
    with pytest.raises(weights.WeightsError, match="expected " + "0" * 64):
        _resolve(uri, "0" * 64)
    assert os.listdir(cache) == []


def test_without_a_digest_a_changed_remote_size_is_fetched_again(cache):
    uri = "memory://radio-test-weights/d/net.pth"
    _put(uri, b"v1")
    assert open(_resolve(uri, None, allow_unverified=True).path, "rb").read() == b"v1"
    _put(uri, b"version 2")
    assert open(_resolve(uri, None, allow_unverified=True).path, "rb").read() == b"version 2"


def test_a_killed_downloads_part_file_is_swept_and_a_live_one_kept(cache):
    os.makedirs(cache)
    dead, live = cache / ".net.pth.abc.part", cache / ".net.pth.def.part"
    dead.write_bytes(b"x" * 100)
    live.write_bytes(b"y")
    old = time.time() - weights.PART_MAX_AGE_S - 60
    os.utime(dead, (old, old))
    uri = "memory://radio-test-weights/e/net.pth"
    _resolve(uri, _put(uri, b"w"))
    assert not dead.exists() and live.exists()


def test_a_digest_that_is_not_hex_is_not_spliced_into_a_path(cache):
    uri = "memory://radio-test-weights/f/net.pth"
    _put(uri, b"w")
    with pytest.raises(weights.WeightsError, match="expected ../../x"):
        _resolve(uri, "../../x")
    assert os.listdir(cache) == []


def test_a_checkpoint_is_loaded_from_the_bytes_whose_sha256_was_checked(tmp_path, monkeypatch):
    """resolve_weights hashed the file, torch.load opened it again: a training run renaming a new
    radio.pt over it in between made dub run unpinned weights. The bytes are read once now."""
    import torch

    from radio.train import checkpoint

    pt = tmp_path / "radio.pt"
    torch.save({"x": torch.zeros(2)}, pt)
    found = weights.resolve_weights(str(pt), hashlib.sha256(pt.read_bytes()).hexdigest(), name="t", how_to_get="")
    assert checkpoint._load_verified(found, str(pt))["x"].shape == (2,)
    torch.save({"x": torch.ones(3)}, pt)            # rewritten after the check
    with pytest.raises(weights.WeightsError, match="changed while it was read"):
        checkpoint._load_verified(found, str(pt))
