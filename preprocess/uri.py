"""fsspec URI helpers: safe joins, atomic writes, local materialisation for ffmpeg/decord."""
from __future__ import annotations

import contextlib
import os
import posixpath
import unicodedata
import uuid
from typing import Iterator, Sequence

import fsspec

from preprocess import progress


class UnsafePathError(ValueError):
    """A user-supplied name would escape the directory it is joined to."""


def is_local(uri: str) -> bool:
    proto = fsspec.core.url_to_fs(uri)[0].protocol
    return "file" in (proto if isinstance(proto, tuple) else (proto,))


def canonical(uri: str) -> str:
    """One spelling of a location: a local path (``file://`` or not, relative, through symlinks)
    resolved, a remote URI without its trailing '/' and with gcsfs's two schemes as one (``gcs://b/x``
    is ``gs://b/x``). For comparing locations, never for opening."""
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" not in uri:
        return os.path.realpath(uri)
    scheme, rest = uri.split("://", 1)
    return ("gs" if scheme.lower() in ("gs", "gcs") else scheme) + "://" + rest.rstrip("/")


def within(uri: str, folder: str) -> bool:
    """``uri`` is ``folder`` or lies under it, however either is spelled (:func:`canonical`)."""
    a, b = canonical(folder), canonical(uri)
    return b == a or b.startswith(a.rstrip("/") + "/")


#: fsspec reads ``a::b`` as a chain of file systems and opens ``a``: a name holding it names another file
CHAIN = "::"


def chain_error(uri: str) -> str | None:
    """Why ``uri`` cannot be read or written as the one file it names, or None: a '::' in it, which
    fsspec takes for a chain of file systems (``/data/talk::1.mp4`` opens ``/data/talk``, another
    file, and a dub output named ``a.mp4::x`` overwrites ``a.mp4``). No spelling escapes it."""
    if CHAIN in uri:
        return (f"{uri!r} holds '::', which fsspec reads as a chain of file systems (it would open "
                f"{uri.split(CHAIN, 1)[0]!r}, another file); rename it without '::'")
    return None


def other_spelling(path: str) -> tuple[str, str] | None:
    """``(form, path)`` of the local file ``path`` names in another Unicode spelling, when that one
    exists: 'café' typed (NFC) in a manifest, 'cafe' + U+0301 (NFD) as macOS wrote the file. A person
    sees one name, the file system holds another. For a "no such file" message, never to open it
    in its place (ids and rows would name a file that is not there)."""
    for form in ("NFC", "NFD"):
        alt = unicodedata.normalize(form, path)
        if alt != path and os.path.exists(alt):
            return form, alt
    return None


def missing_hint(path: str) -> str:
    """'' or, for a missing local file that exists in another Unicode spelling, what to do."""
    found = other_spelling(path)
    if not found:
        return ""
    form, alt = found
    return (f" ({os.path.basename(alt)!r} is there, the same name in Unicode {form}"
            f"{' as macOS writes it' if form == 'NFD' else ''}: give the name as the file system spells it)")


GCS_HOST = "storage.googleapis.com"


def check_network(uris) -> None:
    """Before a job touches gs:// (its checks, its listing): whether Cloud Storage's host resolves.
    Without a network every gcsfs call retries for about 30 s, and a command's checks make several:
    82 s passed before "environment failure". Resolving the name fails in well under a second, so a
    machine without a network is told at once (EnvironmentFailure: exit 1, not the user's mistake).
    Skipped for an emulator, another endpoint or a proxy (STORAGE_EMULATOR_HOST, fsspec's config
    ``FSSPEC_GCS_ENDPOINT_URL`` or a config file giving gcsfs ``endpoint_url``, HTTPS_PROXY: gcsfs
    then never asks that name, or it may not resolve here and still be reached)."""
    import socket
    import time

    import fsspec.config

    from preprocess.failures import EnvironmentFailure

    remote = [u for u in uris if isinstance(u, str) and u.split("://", 1)[0].lower() in ("gs", "gcs")]
    if not remote or any(os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "HTTPS_PROXY", "https_proxy",
                                                      "ALL_PROXY", "all_proxy")):
        return
    if any((fsspec.config.conf.get(p) or {}).get("endpoint_url") for p in ("gs", "gcs", "gcsfs")):
        return
    for attempt in range(3):
        try:
            socket.getaddrinfo(GCS_HOST, 443, type=socket.SOCK_STREAM)
            return
        except OSError as e:   # socket.gaierror: no network, no DNS
            why = e
            time.sleep(0.5 * (attempt + 1))
    raise EnvironmentFailure(f"cannot reach {remote[0]}: {GCS_HOST} does not resolve ({why.strerror or why}); "
                             "is this machine on a network?")


def join(base: str, *names: str) -> str:
    """Join ``names`` under ``base`` refusing absolute parts, '..', '::', empty or control characters."""
    out = base.rstrip("/")
    for name in names:
        if not name or name.startswith("/") or "\x00" in name or any(ord(c) < 32 for c in name):
            raise UnsafePathError(f"Expected a relative name. Got {name!r}.")
        if CHAIN in name:
            raise UnsafePathError(f"Expected a name without '::' (fsspec reads it as a chain of file systems "
                                  f"so it names {name.split(CHAIN, 1)[0]!r}, another file). Got {name!r}.")
        parts = name.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise UnsafePathError(f"Expected a name without '', '.' or '..' parts. Got {name!r}.")
        out = out + "/" + name
    return out


def exists(uri: str) -> bool:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs.exists(path)


def makedirs(uri: str) -> None:
    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(path, exist_ok=True)


def read_bytes(uri: str) -> bytes:
    with fsspec.open(uri, "rb") as f:
        return f.read()


#: the longest file name (one path component, in bytes) local file systems take (NAME_MAX)
NAME_MAX = 255


def temp_basename(name: str) -> str:
    """The hidden, unique temporary name of an upload of ``name``: ``.tmp-<uuid hex>-<name>``, with
    ``name`` cut (whole UTF-8 characters) so that it stays a legal file name: a 250-byte video name
    is legal, its temporary with 38 more bytes was not (ENAMETOOLONG after the whole dub)."""
    head = f".tmp-{uuid.uuid4().hex}-"
    room = NAME_MAX - len(head)
    tail = name.encode("utf-8")[:room].decode("utf-8", "ignore")
    return head + tail


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write to a temporary sibling, then move into place: readers never see a partial file, and
    a write that fails removes its temporary (a process killed mid-write leaves it to its writer's
    next start: ``.tmp-*`` names).

    On local disks the move is an atomic rename, after an fsync of the data (without it a machine
    reset soon after the rename can leave the name pointing at a zero-length file) and followed by
    one of the folder (the rename itself). Object stores (gs://) have no rename, but a single-object
    upload is itself all-or-nothing, so the temp object is copied and removed.
    """
    fs, path = fsspec.core.url_to_fs(uri)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, temp_basename(posixpath.basename(path)))
    local = is_local(uri)
    try:
        if local:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_folder(parent or ".")
            return
        with fs.open(tmp, "wb") as f:
            f.write(data)
        move_file(fs, tmp, path)
    except BaseException:      # a full disk, an I/O error, Ctrl-C: the partial temporary goes too
        _remove_quietly(fs, tmp, local)
        raise


def move_file(fs, src: str, dst: str) -> None:
    """Move one file, both names taken as written. fsspec's ``mv`` (and ``rm``, ``copy``) expands a
    name holding ``[ ] * ?`` as a pattern on object stores: an upload named ``clip[1].mp4`` failed
    (its temporary matched nothing), and a remove of ``a[1].ref1.mp4`` deleted ``a1.ref1.mp4``.
    Single-file calls (``cp_file``, ``rm_file``) never expand."""
    from glob import has_magic   # the rule fsspec's expand_path applies

    if has_magic(src) or has_magic(dst):
        fs.cp_file(src, dst)
        fs.rm_file(src)
    else:
        fs.mv(src, dst)


def remove_file(fs, path: str) -> None:
    """Remove one file, its name taken as written (``fs.rm`` expands ``[ ] * ?`` as a pattern on
    object stores: rotating the checkpoints of ``gs://b/runs/exp[1]`` deleted ``gs://b/runs/exp1``'s)."""
    fs.rm_file(path)


def remove_if_exists(uri: str) -> None:
    """Remove the file ``uri`` names (as written) when it is there."""
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        remove_file(fs, path)
    except FileNotFoundError:
        pass


def remove_tree(fs, path: str) -> None:
    """Remove a file or a folder with everything in it, the name taken as written."""
    if not fs.isdir(path):
        fs.rm_file(path)
    elif _is_local_fs(fs):
        import shutil

        shutil.rmtree(path)
    else:                                   # object stores: a folder is its files' common prefix
        for f in fs.find(path):
            fs.rm_file(f)


def _is_local_fs(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _remove_quietly(fs, path: str, local: bool) -> None:
    try:
        if local:
            os.unlink(path)
        elif fs.exists(path):
            fs.rm_file(path)
    except Exception:  # noqa: BLE001  (already failing: the first error is the one to report)
        pass


def _fsync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable (best effort: some file systems refuse to open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_COPY_BLOCK = 4 * 2**20


@contextlib.contextmanager
def local_copy(uri: str, suffix: str = "", max_bytes: int | None = None,
               schemes: Sequence[str] | None = None) -> Iterator[str]:
    """Yield a local file path for ``uri`` (the file itself when local, a temp copy otherwise).

    Args:
        max_bytes: refuse a source larger than this (its declared size, and what is actually
            copied, since an http server may not say or may lie).
        schemes: the URI schemes allowed ('file' for local paths); None allows any.

    Raises:
        MediaError(stage='probe'): 'unsupported_scheme', 'unsupported_name' (a '::' in it:
            :func:`chain_error`) or 'too_large' (facts about the input).
    """
    from preprocess.media import MediaError

    scheme = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    if schemes is not None and scheme not in schemes:
        raise MediaError("probe", "unsupported_scheme",
                         f"{scheme}:// sources are not allowed (input.schemes: {list(schemes)})", uri)
    if chain_error(uri):     # fsspec would read another file (the part before '::')
        raise MediaError("probe", "unsupported_name", chain_error(uri), uri)
    fs, path = fsspec.core.url_to_fs(uri)

    def too_large(size) -> MediaError:
        return MediaError("probe", "too_large", f"Expected at most {max_bytes} bytes. Got {size}.", uri)

    if is_local(uri):
        if max_bytes is not None and os.path.isfile(path) and os.path.getsize(path) > max_bytes:
            raise too_large(os.path.getsize(path))
        yield path
        return
    from preprocess.writer import locked_temp_dir   # writer imports this module

    with locked_temp_dir(COPY_PREFIX) as d:         # a killed worker's copy: remove_stale_copies
        local = os.path.join(d, "media" + (suffix or os.path.splitext(path)[1][:16]))
        if max_bytes is None:
            fs.get_file(path, local)          # get() would expand [ ] * ? in the name
        else:
            declared = fs.info(path).get("size")
            if declared is not None and declared > max_bytes:
                raise too_large(declared)
            copied = 0
            with fs.open(path, "rb", block_size=_COPY_BLOCK) as src, open(local, "wb") as dst:
                while block := src.read(_COPY_BLOCK):
                    copied += len(block)
                    if copied > max_bytes:
                        raise too_large(f"more than {max_bytes} (still copying)")
                    dst.write(block)
                    progress.beat()
        yield local


COPY_PREFIX = "radio-copy-"


def remove_stale_copies() -> list[str]:
    """Remove the ``$TMPDIR`` copies of remote inputs that killed workers left (a 16 GiB source each,
    at worst); copies in use hold a lock and stay. Each job's workers call it at start."""
    from preprocess.writer import remove_stale_local

    return remove_stale_local(COPY_PREFIX)
