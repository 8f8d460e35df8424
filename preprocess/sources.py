"""Inputs of a preprocessing or dubbing job: a glob of media files or a manifest.

A manifest is CSV (header row) or JSONL with at least ``uri``; optional ``speaker_id`` and
``split`` (preprocess), ``start_s``/``end_s`` (preprocess: a clip range of the video, see
``frame_range``) and any other columns a job needs (``audio_uri`` for dubbing). Relative
URIs in a manifest are resolved against the manifest's folder. File names are data: they are
never interpreted by a shell, and they are kept exactly (spaces, quotes, unicode, leading '-').
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import math
import posixpath
from fractions import Fraction
from typing import Iterator, Optional

import fsspec
from preprocess import uri as uri_mod
from preprocess.errors import UserError

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json")
#: the names a folder lists as videos (any case: ``.MTS``): the usual extensions of every video
#: container ``media.ALLOWED_FORMATS`` opens. mov: mp4 mov m4v 3gp 3g2 f4v; matroska: mkv webm;
#: avi: avi divx; mpegts: ts mts m2ts m2t (AVCHD camcorders, broadcast); mpeg (program stream):
#: mpg mpeg mpe vob; flv; asf: wmv asf; ogg: ogv; mxf. Not listed: audio files (.wav .mp3 .m4a
#: .mka .wma, and .ogg, mostly Vorbis audio: Ogg video is .ogv) and raw video streams with no
#: sound (.h264 .hevc .ivf), which could only be rejects; a glob lists any name.
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv",
                  ".mts", ".m2ts", ".m2t", ".3gp", ".3g2", ".f4v", ".divx", ".mpe", ".vob", ".wmv",
                  ".asf", ".ogv", ".mxf")


class SourceError(UserError, ValueError):
    pass


def full_uri(fs, path: str) -> str:
    if _is_local(fs):
        return os.path.abspath(path)  # ids hash the URI: the same file gets the same id from any cwd
    return fs.unstrip_protocol(path)


def _is_local(fs) -> bool:
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return proto in ("file", "local")


GLOB_CHARS = "*?["


def is_glob(spec: str) -> bool:
    """``spec`` is a pattern: it holds ``* ? [`` and names no existing file or folder. A file that
    exists is used as named even when its name holds them (``clip[1].mp4``, which as a pattern
    would match ``clip1.mp4``, another file), as ``radio evaluate`` does."""
    if not any(c in spec for c in GLOB_CHARS):
        return False
    if uri_mod.chain_error(spec):
        return True      # never looked up: list_sources refuses it
    fs, path = fsspec.core.url_to_fs(spec)
    return not fs.exists(path)


def is_manifest(spec: str) -> bool:
    return spec.lower().endswith(MANIFEST_SUFFIXES) and not is_glob(spec)


def list_sources(spec: str, schemes: tuple[str, ...] | None = None) -> Iterator[dict]:
    """Yield ``{"uri", "speaker_id", "split", ...}`` for a glob/folder/manifest, sorted by URI.

    A folder or glob lists no hidden names below it (``.tmp-*`` uploads, macOS ``._x.mp4``; as
    ``radio evaluate``), unless the glob asks for them (``.*.mp4``); a manifest lists what it names.
    A folder or glob lists a file once: a symlink to a file listed already is left out, and so is one
    that names no file (warnings), as a folder's link to a folder (not followed) is.

    ``schemes``: the URI schemes sources may have (``'file'`` for local paths); None allows any.
    """
    if uri_mod.chain_error(spec):
        raise SourceError(f"--input {uri_mod.chain_error(spec)}.")
    if is_manifest(spec):
        yield from read_manifest(spec, schemes=schemes, ranges=True)
        return
    try:
        check_scheme(spec, schemes)
    except ValueError as e:
        raise SourceError(f"{spec}: {e}") from e
    fs, path = fsspec.core.url_to_fs(spec)
    folder = False
    # details (``islink``) only where there are symlinks: a bucket of 10⁶ objects lists names only
    listed = (lambda paths: paths) if _is_local(fs) else (lambda names: dict.fromkeys(names, {}))
    if is_glob(spec):
        found = listed(fs.glob(path, detail=_is_local(fs)))
        root = name_root = glob_root(path)
        if hidden(path[len(root):]):     # the pattern asks for hidden names itself ('.*.mp4')
            root = None
    elif fs.isdir(path):
        found = listed(fs.find(path, detail=_is_local(fs)))
        root = name_root = path
        folder = True
    elif fs.exists(path):
        found, root, name_root = {path: {}}, None, None
    else:
        raise SourceError(f"No input matches {spec!r}.")
    paths = list(found)
    # symlinks (local disks), which fsspec lists as they are: a link to a folder is not followed
    links = {p for p, info in found.items() if info.get("islink")} if _is_local(fs) else set()
    del found
    if links:
        paths = _drop_unreadable_links(spec, name_root, paths, links, folder, hide=root is not None)
    if folder:
        _log_not_videos(spec, path, paths)
        paths = [p for p in paths if p.lower().endswith(VIDEO_SUFFIXES)]
    if root is not None:   # what a folder or glob lists below its root: never hidden names
        root = root.rstrip("/")
        hid = [p for p in paths if hidden(p[len(root):] if p.startswith(root + "/") else p)]
        if hid and (spec, len(hid)) not in _WARNED:     # once per process, not per listing
            _WARNED.add((spec, len(hid)))
            log.info("%s: left out %d hidden file(s) (%s): uploads in progress, macOS ._ files", spec,
                     len(hid), ", ".join(posixpath.basename(p) for p in sorted(hid)[:3]))
        left_out = set(hid)
        paths = [p for p in paths if p not in left_out]
    if links:
        paths = _one_path_per_file(spec, name_root, paths, links)
    for p in sorted(paths):
        if fs.isfile(p):
            yield {"uri": full_uri(fs, p), "speaker_id": None, "split": None}


def _below(root: Optional[str], p: str) -> str:
    """``p`` relative to a listing's ``root`` (its name when it is not below it)."""
    root = (root or "").rstrip("/")
    return p[len(root) + 1:] if root and p.startswith(root + "/") else posixpath.basename(p)


def _drop_unreadable_links(spec: str, root: str, paths: list[str], links: set[str], folder: bool,
                           hide: bool) -> list[str]:
    """``paths`` less the symlinks of a folder or glob listing that name no file, each said in a
    warning (once per process) instead of being dropped silently as a non-file: a dangling link to a
    video (a manifest line naming it is a reject ``not_found``) and, in a folder, a link to a folder,
    which the listing does not follow. Links with a name the listing leaves out (a hidden one where
    ``hide``, in a folder one not named as a video) are kept here, for the steps that leave them out."""
    dangling, folders = [], []
    for p in sorted(links):
        if hide and hidden(_below(root, p)) or (
                folder and not p.lower().endswith(VIDEO_SUFFIXES) and not os.path.isdir(p)):
            continue
        if not os.path.exists(p):
            dangling.append(p)
        elif folder and os.path.isdir(p):
            folders.append(p)
    for left, what in ((dangling, "broken symlink(s) (no file at their target)"),
                       (folders, "symlinked folder(s), which a folder listing does not follow "
                                 "(a glob below the link, or a manifest, lists their videos)")):
        if left and (spec, what, tuple(left)) not in _WARNED:     # once per process, not per listing
            _WARNED.add((spec, what, tuple(left)))
            log.warning("%s: left out %d %s: %s", spec, len(left), what, ", ".join(
                f"{_below(root, p)} -> {_readlink(p)}" for p in left[:5]) + (", ..." if len(left) > 5 else ""))
    gone = set(dangling) | set(folders)
    return [p for p in paths if p not in gone] if gone else paths


def _readlink(p: str) -> str:
    try:
        return os.readlink(p)
    except OSError:
        return "?"


def _one_path_per_file(spec: str, root: str, paths: list[str], links: set[str]) -> list[str]:
    """One of ``paths`` per real file: a symlink to a file listed already (or another link to the same
    file) is left out with a warning (once per process), since its rows would repeat the file's
    frames under another id (in train and in eval). Kept: the path that is no symlink itself, else
    the first in sorted order, so the file keeps the id (URI) it has without the links."""
    real_dirs: dict[str, str] = {}

    def real(p: str) -> str:
        if p in links:
            return os.path.realpath(p)
        d = posixpath.dirname(p)      # not a link itself: only its folder may be (one realpath a folder)
        if d not in real_dirs:
            real_dirs[d] = os.path.realpath(d)
        return posixpath.join(real_dirs[d], posixpath.basename(p))

    by_file: dict[str, list[str]] = {}
    for p in paths:
        by_file.setdefault(real(p), []).append(p)
    dropped: list[tuple[str, str]] = []
    for same in by_file.values():
        if len(same) > 1:
            same.sort(key=lambda p: (p in links, p))
            dropped += [(q, same[0]) for q in same[1:]]
    if not dropped:
        return paths
    dropped.sort()
    if (spec, "same file", tuple(dropped)) not in _WARNED:     # once per process, not per listing
        _WARNED.add((spec, "same file", tuple(dropped)))
        log.warning("%s: left out %d symlink(s) to a file listed already (its frames would be in two "
                    "sources' rows): %s", spec, len(dropped), ", ".join(
                        f"{_below(root, q)} (= {_below(root, k)})" for q, k in dropped[:5])
                    + (", ..." if len(dropped) > 5 else ""))
    gone = {q for q, _ in dropped}
    return [p for p in paths if p not in gone]


def glob_root(path: str) -> str:
    """The folder a glob pattern lists below: its path up to the last '/' before the first of
    ``* ? [`` (``/data/*/a.mp4`` -> ``/data``)."""
    root = path[: min(path.index(c) for c in GLOB_CHARS if c in path)]
    return root if root.endswith("/") else posixpath.dirname(root)


def hidden(rel: str) -> bool:
    """A path (below a listing's root) with a part that starts with '.': ``.tmp-<uuid>-x.mp4`` (a write
    in progress or killed), macOS's ``._x.mp4`` (AppleDouble metadata, not a video), ``.cache/``."""
    return any(part.startswith(".") for part in rel.split("/"))


_WARNED: set = set()


def _log_not_videos(spec: str, root: str, paths: list[str]) -> None:
    """One line (once per process) on the files a folder listing leaves out by their suffix, counted
    by suffix (hidden names are left out silently: ``.DS_Store``), so that a video in a container
    named otherwise is not dropped without a word."""
    others = [p for p in paths if not p.lower().endswith(VIDEO_SUFFIXES) and not hidden(_below(root, p))]
    if not others or (spec, "not videos", len(others)) in _WARNED:
        return
    _WARNED.add((spec, "not videos", len(others)))
    by_suffix: dict[str, int] = {}
    for p in others:
        suffix = posixpath.splitext(posixpath.basename(p))[1].lower() or "(no suffix)"
        by_suffix[suffix] = by_suffix.get(suffix, 0) + 1
    kinds = sorted(by_suffix.items(), key=lambda kv: (-kv[1], kv[0]))
    log.info("%s: left out %d file(s) not named as videos (%s%s; videos: %s, ...; a glob lists any name)",
             spec, len(others), ", ".join(f"{n} {k}" for k, n in kinds[:5]), ", ..." if len(kinds) > 5 else "",
             ", ".join(VIDEO_SUFFIXES[:4]))


def read_manifest(uri: str, key: tuple[str, ...] = ("uri",),
                  schemes: tuple[str, ...] | None = None, ranges: bool = False) -> Iterator[dict]:
    """Records of a CSV/JSONL manifest, all checked before the first is yielded.

    Every record is validated first (a JSON object / a CSV row with as many fields as the
    header, a non-empty string ``uri`` whose scheme is in ``schemes``, scalar ``speaker_id`` and
    ``split``); the first bad one raises ``SourceError("<file>:<line>: <reason>")`` (one line,
    with how many more are bad), so a bad manifest fails before any work. ``speaker_id`` and
    ``split`` become strings (a CSV reader or a JSON number gives 12, the schema wants "12"),
    a UTF-8 byte-order mark (Excel exports) is accepted, and later duplicates of the same ``key``
    fields are dropped with a warning naming their lines (they would write the same ids twice);
    a duplicate whose ``speaker_id`` or ``split`` differ is an error, since one of the two lines'
    labels would be lost.

    ``ranges`` (preprocess): the optional ``start_s``/``end_s`` columns are a clip range of the
    video (``frame_range``), checked here (a number, finite, >= 0, end > start, holding a frame);
    a record keeps them as floats (None: open) and is keyed by its URI and range's frames, so the
    same URI with the same range is a duplicate as above, and two lines whose ranges of one URI
    share a frame (a line without a range covers the whole video) are an error naming both lines:
    that frame would be in two rows (and in train and eval).
    """
    base = posixpath.dirname(uri)
    errors: list[str] = []
    records = numbered_records(uri, errors)
    out_records: list[dict] = []
    seen: dict[tuple, tuple[int, dict]] = {}
    dropped: list[str] = []
    for n, rec in records:
        try:
            out = checked_record(rec, base, schemes)
            frames = checked_range(out) if ranges else None
        except ValueError as e:
            errors.append(f"{uri}:{n}: {e}")
            continue
        # file:///x and /x are one file (the URI itself is kept as written: source ids hash it)
        k = tuple(uri_mod.canonical(v) if isinstance(v, str) and f.endswith("uri") else v
                  for f, v in ((f, out.get(f)) for f in key))
        if ranges:
            k = (*k, frames)
        if k in seen:
            first, kept = seen[k]
            differ = [f for f in ("speaker_id", "split") if f not in key and kept.get(f) != out.get(f)]
            if differ:   # which line's labels are right is the user's to say, not ours to guess
                f = differ[0]
                errors.append(f"{uri}:{n}: repeats line {first}'s {'/'.join(key)} with another {f} "
                              f"({out.get(f)!r}, line {first}: {kept.get(f)!r}); keep one of the two lines.")
                continue
            dropped.append(f"{n} (= line {first})")
            continue
        seen[k] = (n, out)
        out_records.append(out)
    if ranges:
        errors += _overlaps(uri, [(n, rec) for k, (n, rec) in seen.items()])
    if errors:
        more = f" (+{len(errors) - 1} more bad line(s))" if len(errors) > 1 else ""
        raise SourceError(errors[0] + more)
    if not out_records:
        raise SourceError(f"{uri}: no records.")
    if dropped and (uri, tuple(dropped)) not in _WARNED:       # once per process, not per listing
        _WARNED.add((uri, tuple(dropped)))
        log.warning("%s: dropped %d duplicate record(s) of the same %s at line(s) %s", uri,
                    len(dropped), "/".join(key), ", ".join(dropped[:10]) + (" ..." if len(dropped) > 10 else ""))
    yield from out_records


def numbered_records(uri: str, errors: list[str] | None = None) -> list[tuple[int, dict]]:
    """(line number, raw record) of every data line of a CSV/JSONL manifest, as written (no path
    resolution, no coercion); lines of the wrong shape go to ``errors`` (skipped when None)."""
    if uri_mod.chain_error(uri):
        raise SourceError(f"Manifest {uri_mod.chain_error(uri)}.")
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        raise SourceError(f"Manifest {uri!r} does not exist.")
    try:
        with fsspec.open(uri, "rt", encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise SourceError(f"{uri}: not UTF-8 text ({e.reason} at byte {e.start}).") from e
    return list(_raw_records(uri, text, [] if errors is None else errors))


def _raw_records(uri: str, text: str, errors: list[str]) -> Iterator[tuple[int, dict]]:
    """(line number, record) of every data line; shape errors are appended to ``errors``."""
    if uri.lower().endswith(".csv"):
        reader = csv.reader(io.StringIO(text))
        try:
            header = next(reader, None)
            if not header:
                errors.append(f"{uri}:1: no header row.")
                return
            header = [h.strip() for h in header]
            if "uri" not in header:
                errors.append(f"{uri}:1: the header {header} has no 'uri' column.")
                return
            line = reader.line_num
            for row in reader:
                n, line = line + 1, reader.line_num
                if not any(c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    hint = " (an unquoted comma in a value?)" if len(row) > len(header) else ""
                    errors.append(f"{uri}:{n}: {len(row)} fields, the header has {len(header)}{hint}.")
                    continue
                yield n, dict(zip(header, row))
        except csv.Error as e:
            errors.append(f"{uri}:{reader.line_num}: unreadable CSV ({e}).")
        return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"{uri}:{n}: not JSON ({e.msg}).")
            continue
        if not isinstance(rec, dict):
            errors.append(f"{uri}:{n}: expected a JSON object. Got {type(rec).__name__}.")
            continue
        yield n, rec


def _resolve(u: str, base: str) -> str:
    if "://" not in u and not u.startswith("/"):
        u = posixpath.join(base, u) if base else u
    return u if "://" in u else os.path.abspath(u)


def checked_record(rec: dict, base: str, schemes: tuple[str, ...] | None) -> dict:
    """One manifest record, resolved and typed; ValueError(reason) when it cannot be used."""
    u = rec.get("uri")
    if not isinstance(u, str):
        raise ValueError("no 'uri'." if u is None else f"'uri' must be a string. Got {u!r}.")
    if not u.strip():
        raise ValueError("empty 'uri'.")
    out = {k: (v if v != "" else None) for k, v in rec.items()}
    for f, v in list(out.items()):  # uri and other URI columns (audio_uri, reference_uri, ...)
        if f == "uri" or f.endswith("_uri") and v is not None:
            if not isinstance(v, str):
                raise ValueError(f"{f!r} must be a string. Got {v!r}.")
            if not v.strip():            # blanks: no location (resolved, they named the manifest's folder)
                out[f] = None
                continue
            out[f] = _resolve(v.strip(), base)
            check_scheme(out[f], schemes)
            if uri_mod.chain_error(out[f]):
                raise ValueError(f"{f!r}: {uri_mod.chain_error(v)}.")
    for f in ("speaker_id", "split"):
        v = out.get(f)
        if isinstance(v, bool) or isinstance(v, (list, dict)):
            raise ValueError(f"{f!r} must be a string or a number. Got {v!r}.")
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        out[f] = None if v is None else str(v).strip() or None
    return out


FPS = 25   # the frame grid clip ranges snap to (every source is decoded at 25 fps CFR)


def frame_range(start_s, end_s) -> Optional[tuple[int, Optional[int]]]:
    """The 25 fps frames ``[first, stop)`` of a clip range ``[start_s, end_s)`` (seconds on the
    video's timeline, 0 = its first frame; None: from the start / to the end, ``stop`` None).

    Frame k covers [k/25, (k+1)/25) and belongs to the range when it starts in it: first =
    ceil(start_s·25), stop = ceil(end_s·25), in exact decimal arithmetic (2.4 s is frame 60,
    not 59.99..). Adjacent ranges (a line's end_s = the next one's start_s) share no frame and
    miss none. None when there is no range or it is the whole video (start 0, no end): such a line
    is the plain source, with the URI's own id."""
    if start_s is None and end_s is None:
        return None
    first = 0 if start_s is None else math.ceil(_exact(start_s) * FPS)
    stop = None if end_s is None else math.ceil(_exact(end_s) * FPS)
    return None if first == 0 and stop is None else (first, stop)


def _exact(x: float) -> Fraction:
    return Fraction(repr(float(x)))   # the shortest decimal that reads back as x: 2.4 -> 12/5


def checked_range(out: dict) -> Optional[tuple[int, Optional[int]]]:
    """``out``'s ``start_s``/``end_s`` as floats (None where empty), and their frames
    (``frame_range``); ValueError(reason) when they cannot be a range."""
    for f in ("start_s", "end_s"):
        v = out.get(f)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise ValueError(f"{f!r} must be a number of seconds. Got {v!r}.")
        try:
            x = float(v.strip()) if isinstance(v, str) else float(v)
        except ValueError:
            raise ValueError(f"{f!r} must be a number of seconds. Got {v!r}.") from None
        if not math.isfinite(x):
            raise ValueError(f"{f!r} must be a finite number of seconds. Got {v!r}.")
        if x < 0:
            raise ValueError(f"{f!r} must be >= 0 (seconds from the video's first frame). Got {v!r}.")
        out[f] = x
    a, b = out.get("start_s"), out.get("end_s")
    if a is not None and b is not None and b <= a:
        raise ValueError(f"'end_s' ({b:g}) must be after 'start_s' ({a:g}).")
    frames = frame_range(a, b)
    if frames is not None and frames[1] is not None and frames[1] <= frames[0]:
        raise ValueError(f"the range {a or 0:g}-{b:g} s holds no {FPS} fps frame (a frame k covers "
                         f"[k/{FPS}, (k+1)/{FPS}) s and belongs to the range where it starts).")
    return frames


def _overlaps(uri: str, records: list[tuple[int, dict]]) -> list[str]:
    """``file:line: reason`` for every line whose range shares a frame with an earlier line's range
    of the same video (no range: the whole video)."""
    by_video: dict[str, list] = {}
    for n, rec in records:
        fr = frame_range(rec.get("start_s"), rec.get("end_s")) or (0, None)
        by_video.setdefault(uri_mod.canonical(rec["uri"]), []).append((n, fr, rec))
    errors = []
    for spans in by_video.values():
        spans.sort(key=lambda x: (x[1][0], x[0]))
        reach = None   # the span reaching furthest so far
        for n, (a, b), rec in spans:
            if reach is not None and (reach[1][1] is None or a < reach[1][1]):
                m, other = reach[0], reach[2]
                lo, hi = sorted((n, m))
                errors.append(f"{uri}:{hi}: {_span(rec if hi == n else other)} overlaps line {lo}'s "
                              f"{_span(other if hi == n else rec)} of the same video: a frame would be in "
                              "two rows (and could be in train and eval); make the ranges disjoint.")
            if reach is None or reach[1][1] is not None and (b is None or b > reach[1][1]):
                reach = (n, (a, b), rec)
    errors.sort(key=lambda e: int(e[len(uri) + 1:].split(":", 1)[0]))
    return errors


def _span(rec: dict) -> str:
    a, b = rec.get("start_s"), rec.get("end_s")
    if a is None and b is None:
        return "whole video (no range)"
    fr = frame_range(a, b) or (0, None)
    return (f"range {a or 0:g}-{'end' if b is None else f'{b:g}'} s (frames {fr[0]}.."
            f"{'end' if fr[1] is None else fr[1] - 1})")


def scheme_of(uri: str) -> str:
    """``'file'`` for local paths, else the URI's scheme (``gs``, ``memory``, ``https``, ...)."""
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def check_scheme(uri: str, schemes: tuple[str, ...] | None) -> None:
    """ValueError unless ``uri``'s scheme is one of ``schemes`` (None: any)."""
    if schemes is not None and scheme_of(uri) not in schemes:
        raise ValueError(f"{scheme_of(uri)}:// sources are not allowed (allowed: "
                         f"{', '.join(schemes)}; set input.schemes in the config).")
