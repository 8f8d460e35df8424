"""Which generated video is scored against which reference: the pairs of an evaluation run.

Two ways to say it (``radio evaluate --generated … [--reference …]``):

**Manifest** (``--generated pairs.csv`` or ``.jsonl``): one record per pair with ``generated`` and
``reference`` and optionally ``dataset``, ``method`` (default: the CLI's ``--dataset``/``--method``)
and ``key`` (default: the generated path without suffix — its file name for a full URI). Relative paths resolve against
the manifest's folder — or, for ``reference``, against ``--reference`` when it is given — through
:func:`preprocess.uri.join` (no absolute parts, no '..'); full URIs and absolute paths are used
as written. An empty ``generated``/``reference`` cell is an error in the manifest.

**Two folders** (``--generated DIR_OR_GLOB --reference DIR``; a folder or manifest that exists is
used as written even when its name holds ``[ ] ? *``, a glob only otherwise; names starting with
'.' are skipped): video files (by suffix) under each
are matched by relative path without the suffix (``spk1/clip 03.mp4`` ↔ ``spk1/clip 03.mov``), then
by that path in one Unicode spelling (NFC: ``café`` typed, ``cafe`` + U+0301 as macOS writes it); an
exact relative path wins over a suffix-only difference, and two references with the same stem are
an error (write a manifest). A folder or glob that lists no video on either side is an error
(a mistake, not an empty run that would replace a run of the same id). A generated video without a reference and a reference without a
generated video are both kept as pairs with the missing side empty. A generated video without a
reference becomes a ``missing_file`` reject; a reference without a generated video is
**unpaired** (:func:`is_unpaired`): counted apart (inputs = scored + rejected + unpaired), never
a reject, since a folder of references usually holds more clips than one method produced.

Table names: ``--dataset`` and ``--method`` default to the folder names (:func:`default_names`):
the reference folder's and the generated folder's (for a manifest: its folder's and its stem).

Each pair gets a stable ``pair_id`` (hash of dataset, method and both URIs); a pair listed twice
is scored once. File names are data: never given to a shell, kept exactly.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import posixpath
import unicodedata
from typing import Iterator, Sequence

import fsspec

from preprocess import uri as uri_mod
from preprocess.sources import VIDEO_SUFFIXES, full_uri as _full_uri, glob_root, hidden, scheme_of
from preprocess.sources import is_glob as _is_glob
from preprocess.errors import UserError

MANIFEST_SUFFIXES = (".csv", ".jsonl")


class PairsError(UserError, ValueError):
    """The pairs cannot be listed (no input, malformed manifest, ambiguous match)."""


def pair_id(dataset: str, method: str, generated: str | None, reference: str | None) -> str:
    text = "\n".join([dataset, method, generated or "", reference or ""])
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def make_pair(key: str, generated: str | None, reference: str | None, dataset: str, method: str) -> dict:
    return {"pair_id": pair_id(dataset, method, generated, reference), "key": key, "generated": generated,
            "reference": reference, "dataset": dataset, "method": method}


def is_manifest(spec: str) -> bool:
    return spec.lower().endswith(MANIFEST_SUFFIXES) and not _is_glob(spec)


def _stem(rel: str) -> str:
    base, ext = posixpath.splitext(rel)
    return base if ext.lower() in VIDEO_SUFFIXES else rel


def _default_key(value: str) -> str:
    """A manifest pair's key: the relative path without suffix, or the file name for a full URI."""
    full = "://" in value or value.startswith("/")
    return _stem(posixpath.basename(value) if full else (value[2:] if value.startswith("./") else value))


def _resolve(value: str, base: str, where: str) -> str:
    """A manifest cell: kept when it is a full URI or an absolute path, else joined under ``base``."""
    if "://" in value or value.startswith("/"):
        return value
    rel = value[2:] if value.startswith("./") else value
    try:
        return uri_mod.join(base, rel) if base else rel
    except uri_mod.UnsafePathError as e:
        raise PairsError(f"{where}: {e}") from e


def _records(uri: str) -> list[dict]:
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        raise PairsError(f"Manifest {uri!r} does not exist.")
    with fsspec.open(uri, "rt", encoding="utf-8") as f:
        text = f.read()
    if uri.lower().endswith(".csv"):
        return list(csv.DictReader(io.StringIO(text)))
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise PairsError(f"{uri}:{n}: not JSON ({e.msg}).") from e
            if not isinstance(rec, dict):
                raise PairsError(f"{uri}:{n}: expected a JSON object. Got {type(rec).__name__}.")
            out.append(rec)
    return out


def _check_scheme(value: str, schemes, where: str) -> None:
    """PairsError unless ``value``'s scheme is allowed (``schemes`` None: any)."""
    if schemes is not None and scheme_of(value) not in schemes:
        raise PairsError(f"{where}: {scheme_of(value)}:// is not an allowed scheme (allowed: {', '.join(schemes)}; "
                         f"set input.schemes to read from it). Got {value!r}.")


def read_manifest(uri: str, *, reference_root: str | None, dataset: str, method: str,
                  schemes: Sequence[str] | None = None) -> Iterator[dict]:
    """Pairs of a CSV/JSONL manifest (see the module docstring); every record is checked (columns,
    paths, URI schemes in ``schemes``) before the first pair is yielded."""
    base = posixpath.dirname(uri)
    out = []
    for n, rec in enumerate(_records(uri), 1):
        where = f"{uri}: record {n}"
        cells = {k: (str(v).strip() if v is not None else "") for k, v in rec.items() if k is not None}
        for col in ("generated", "reference"):
            if not cells.get(col):
                raise PairsError(f"{where} has no {col!r} (columns: generated, reference[, dataset, method, key]).")
        gen = _resolve(cells["generated"], base, where)
        ref = _resolve(cells["reference"], reference_root or base, where)
        for col, value in (("generated", gen), ("reference", ref)):
            if uri_mod.chain_error(value):
                raise PairsError(f"{where}, {col}: {uri_mod.chain_error(value)}.")
        _check_scheme(gen, schemes, f"{where}, generated")
        _check_scheme(ref, schemes, f"{where}, reference")
        key = cells.get("key") or _default_key(cells["generated"])
        out.append(make_pair(key, gen, ref, cells.get("dataset") or dataset, cells.get("method") or method))
    yield from out


def _videos(spec: str, flag: str = "--generated") -> dict[str, str]:
    """Relative path -> full URI of the video files of a folder or glob; a folder or glob that
    lists none is a mistake (:class:`PairsError`), never an empty run."""
    fs, path = fsspec.core.url_to_fs(spec)
    glob = _is_glob(spec)
    if glob:
        root = glob_root(path)
        found = [p for p in fs.glob(path) if fs.isfile(p)]
    elif fs.isdir(path):
        root = path
        found = [p for p in fs.find(path) if p.lower().endswith(VIDEO_SUFFIXES)]
    elif fs.exists(path):
        raise PairsError(f"{flag} {spec!r} is a single file; expected a folder, a glob or a pairs manifest "
                         "(.csv/.jsonl).")
    else:
        raise PairsError(f"Expected a folder, glob or manifest (.csv/.jsonl). Got {spec!r}, which does not exist.")
    root = root.rstrip("/")
    out = {}
    for p in found:
        rel = p[len(root) + 1:] if root and p.startswith(root + "/") else posixpath.basename(p)
        if hidden(rel):
            continue  # .tmp-<uuid>-x.mp4 of a killed write, macOS ._x.mp4, .cache/
        out[rel] = _full_uri(fs, p)
    if not out:
        what = "glob" if glob else "folder"
        raise PairsError(f"{flag} {spec!r}: the {what} lists no video files ({', '.join(VIDEO_SUFFIXES[:4])}, ...).")
    return out


def match_folders(generated: str, reference: str, *, dataset: str, method: str) -> Iterator[dict]:
    """Pairs of two folders matched by relative path without suffix, sorted by key."""
    gen, ref = _videos(generated, "--generated"), _videos(reference, "--reference")
    by_stem: dict[str, list[str]] = {}
    by_nfc: dict[str, list[str]] = {}   # 'café' typed (NFC) and as macOS writes it (NFD): one name
    for rel in ref:
        by_stem.setdefault(_stem(rel), []).append(rel)
        by_nfc.setdefault(unicodedata.normalize("NFC", _stem(rel)), []).append(rel)
    used, pairs = set(), {}
    for rel in sorted(gen):
        stem = _stem(rel)
        if rel in ref:
            match = rel
        else:
            cands = by_stem.get(stem) or by_nfc.get(unicodedata.normalize("NFC", stem), [])
            if len(cands) > 1:
                raise PairsError(f"{generated}/{rel}: several references share its name {sorted(cands)}; "
                                 "write a pairs manifest.")
            match = cands[0] if cands else None
        if match is not None and match in used:
            raise PairsError(f"Reference {match!r} matches several generated videos; write a pairs manifest.")
        if match is not None:
            used.add(match)
        pairs[stem if stem not in pairs else rel] = (gen[rel], ref.get(match) if match else None)
    for rel in sorted(set(ref) - used):
        pairs.setdefault(_stem(rel) if _stem(rel) not in pairs else rel, (None, ref[rel]))
    for key in sorted(pairs):
        g, r = pairs[key]
        yield make_pair(key, g, r, dataset, method)


def is_unpaired(pair: dict) -> bool:
    """A reference without a generated video (two-folder matching only)."""
    return not pair["generated"] and bool(pair["reference"])


def _folder_name(spec: str) -> str:
    _, path = fsspec.core.url_to_fs(spec)
    if _is_glob(spec):
        path = glob_root(path)
    return posixpath.basename(path.rstrip("/")) or "root"


DUB_MANIFEST = "evaluate_pairs.jsonl"   # what `radio dub` writes beside OUTPUT/videos (pipelines.dub.EVAL_MANIFEST)


def default_names(generated: str, reference: str | None) -> tuple[str, str]:
    """``(dataset, method)`` for a run without ``--dataset``/``--method``: the reference folder's
    name and the generated folder's (for ``DUB/videos``, a `radio dub` output, ``DUB``'s); for a
    manifest, its folder's name (or ``--reference``'s) and its file stem; for ``DUB/evaluate_pairs.jsonl``
    (a `radio dub` output's), ``DUB``'s name is the method, as for ``DUB/videos``."""
    spelled = generated if "://" in generated else os.path.abspath(generated)   # 'videos' and './videos' alike
    if is_manifest(generated):
        stem = posixpath.splitext(posixpath.basename(generated))[0]
        if posixpath.basename(generated) == DUB_MANIFEST:
            return (_folder_name(reference) if reference else "dataset"), _folder_name(posixpath.dirname(spelled))
        return (_folder_name(reference) if reference else _folder_name(posixpath.dirname(generated) or ".")), stem
    method = _folder_name(generated)
    parent = posixpath.dirname(spelled.rstrip("/"))
    if method == "videos" and parent and not _is_glob(generated):   # a `radio dub` output: its folder's name
        method = _folder_name(parent)
    return (_folder_name(reference) if reference else "dataset"), method


def list_pairs(generated: str, reference: str | None = None, *, dataset: str = "dataset",
               method: str = "method", schemes: Sequence[str] | None = None) -> Iterator[dict]:
    """Every pair of a run, each listed once: ``{'pair_id', 'key', 'generated', 'reference',
    'dataset', 'method'}`` (a missing side is None). ``schemes``: the URI schemes the specs and
    every video may have (``'file'`` for local paths; ``input.schemes``), None: any."""
    if not dataset or not method:
        raise PairsError("Expected non-empty --dataset and --method names.")
    for flag, spec in (("--generated", generated), ("--reference", reference)):
        if spec is not None and uri_mod.chain_error(spec):
            raise PairsError(f"{flag} {uri_mod.chain_error(spec)}.")
    _check_scheme(generated, schemes, "--generated")
    if reference is not None:
        _check_scheme(reference, schemes, "--reference")
    if is_manifest(generated):
        it = read_manifest(generated, reference_root=reference, dataset=dataset, method=method, schemes=schemes)
    elif reference is None:
        raise PairsError("--reference is required unless --generated is a pairs manifest (.csv/.jsonl).")
    else:
        it = match_folders(generated, reference, dataset=dataset, method=method)
    seen = set()
    for pair in it:
        if pair["pair_id"] not in seen:
            seen.add(pair["pair_id"])
            yield pair
