"""Inputs of a preprocessing or dubbing job: a glob of media files or a manifest.

A manifest is CSV (header row) or JSONL with at least ``uri``; optional ``speaker_id`` and
``split`` (preprocess) and any other columns a job needs (``audio_uri`` for dubbing). Relative
URIs in a manifest are resolved against the manifest's folder. File names are data: they are
never interpreted by a shell, and they are kept exactly (spaces, quotes, unicode, leading '-').
"""
from __future__ import annotations

import csv
import io
import json
import os
import posixpath
from typing import Iterator

import fsspec
from preprocess.errors import UserError

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv")


class SourceError(UserError, ValueError):
    pass


def _full_uri(fs, path: str) -> str:
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if proto in ("file", "local"):
        return os.path.abspath(path)  # ids hash the URI: the same file gets the same id from any cwd
    return fs.unstrip_protocol(path)


def is_manifest(spec: str) -> bool:
    return spec.lower().endswith(MANIFEST_SUFFIXES) and not any(c in spec for c in "*?[")


def list_sources(spec: str) -> Iterator[dict]:
    """Yield ``{"uri", "speaker_id", "split", ...}`` for a glob/folder/manifest, sorted by URI."""
    if is_manifest(spec):
        yield from read_manifest(spec)
        return
    fs, path = fsspec.core.url_to_fs(spec)
    if any(c in path for c in "*?["):
        paths = fs.glob(path)
    elif fs.isdir(path):
        paths = [p for p in fs.find(path) if p.lower().endswith(VIDEO_SUFFIXES)]
    elif fs.exists(path):
        paths = [path]
    else:
        raise SourceError(f"No input matches {spec!r}.")
    for p in sorted(paths):
        if fs.isfile(p):
            yield {"uri": _full_uri(fs, p), "speaker_id": None, "split": None}


def read_manifest(uri: str, key: tuple[str, ...] = ("uri",)) -> Iterator[dict]:
    """Records of a CSV/JSONL manifest; later duplicates of the same ``key`` fields are dropped."""
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        raise SourceError(f"Manifest {uri!r} does not exist.")
    base = posixpath.dirname(uri)
    with fsspec.open(uri, "rt", encoding="utf-8") as f:
        text = f.read()
    if uri.lower().endswith(".csv"):
        records = list(csv.DictReader(io.StringIO(text)))
    else:
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise SourceError(f"{uri}:{n}: not JSON ({e.msg}).") from e
    seen = set()
    for n, rec in enumerate(records, 1):
        u = (rec.get("uri") or "").strip() if isinstance(rec.get("uri"), str) else rec.get("uri")
        if not u:
            raise SourceError(f"{uri}: record {n} has no 'uri'.")
        if "://" not in u and not u.startswith("/"):
            u = posixpath.join(base, u) if base else u
        if "://" not in u:
            u = os.path.abspath(u)
        out = {k: (v if v != "" else None) for k, v in rec.items()}
        out["uri"] = u
        for f, v in list(out.items()):  # other URI columns (audio_uri, reference_uri, ...) likewise
            if f.endswith("_uri") and isinstance(v, str) and v:
                v = v.strip()
                if "://" not in v and not v.startswith("/"):
                    v = posixpath.join(base, v) if base else v
                out[f] = v if "://" in v else os.path.abspath(v)
        k = tuple(out.get(f) for f in key)
        if k in seen:
            continue  # duplicates in a manifest would write the same ids twice
        seen.add(k)
        out.setdefault("speaker_id", None)
        out.setdefault("split", None)
        yield out
