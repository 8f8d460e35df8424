"""Checks every command runs before any work: inputs, outputs, weights, configs and options.

Each check raises :class:`preprocess.errors.UserError` with one line that names the fix; the
``radio`` CLI prints it and exits 2 (the traceback only with ``-v``). They are cheap (a listing,
a stat, an argparse pass) and write nothing, so a mistake never leaves a half-made output behind.

    radio.cli._dispatch  -> command(args)              (input, output, --config file)
    radio.cli.main       -> unknown_options(...)       (options neither radio nor Beam knows)
    radio.train.cli.main -> train(cfg, data, ...)      (shards, VGG19 / S weights)
"""
from __future__ import annotations

import argparse
import difflib
import os
from typing import Sequence

from preprocess.errors import UserError


class CheckError(UserError, ValueError):
    pass


# ---- outputs ---------------------------------------------------------------------------------
def _local_path(uri: str) -> str | None:
    """The local filesystem path of ``uri``, or None for a remote URI."""
    if uri.startswith("file://"):
        return uri[len("file://"):]
    return None if "://" in uri else uri


def _no_chain(uri: str, flag: str) -> None:
    """A location with '::' is another one to fsspec (``out::x`` writes ``out``): refused."""
    from preprocess import uri as uri_mod

    if uri_mod.chain_error(uri):
        raise CheckError(f"{flag} {uri_mod.chain_error(uri)}.")


def output_folder(uri: str, flag: str = "--output") -> None:
    """``uri`` can become a folder: it is not a file and its nearest existing ancestor is a
    writable folder (local paths); remote URIs: not an existing object."""
    _no_chain(uri, flag)
    path = _local_path(uri)
    if path is None:
        import fsspec

        fs, p = fsspec.core.url_to_fs(uri)
        if fs.isfile(p):
            raise CheckError(f"{flag} {uri!r} is an existing file; expected a folder (created when missing).")
        return
    path = os.path.abspath(path)
    if os.path.isfile(path):
        raise CheckError(f"{flag} {uri!r} is an existing file; expected a folder (created when missing).")
    if os.path.islink(path) and not os.path.exists(path):
        raise CheckError(f"{flag} {uri!r} is a symbolic link to {os.readlink(path)!r}, which does not exist; "
                         "create that folder or give another --output.")
    _writable_parent(path, uri, flag)


def output_file(uri: str, flag: str = "--output") -> None:
    """``uri`` can be written as a file: not an existing folder, its parent can be created."""
    _no_chain(uri, flag)
    path = _local_path(uri)
    if path is None:
        return
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise CheckError(f"{flag} {uri!r} is an existing folder; expected a file name (e.g. sheet.png).")
    _writable_parent(os.path.dirname(path), uri, flag)


def outside(uri: str, other: str, flag: str, other_flag: str, why: str) -> None:
    """``uri`` is neither ``other`` nor under it (local paths compared resolved: ``ds``, ``./ds/``
    and a symlink to it are one folder)."""
    from preprocess import uri as uri_mod

    if uri_mod.within(uri, other):
        raise CheckError(f"{flag} {uri!r} is {other_flag} {other!r} or inside it: {why}; use a folder outside it.")


def _writable_parent(path: str, uri: str, flag: str) -> None:
    cur = path
    while not os.path.exists(cur):
        cur = os.path.dirname(cur)
    if not os.path.isdir(cur):
        raise CheckError(f"{flag} {uri!r}: {cur!r} is a file, so no folder can be made under it.")
    if not os.access(cur, os.W_OK | os.X_OK):
        raise CheckError(f"{flag} {uri!r}: no permission to write in {cur!r}.")


# ---- inputs ----------------------------------------------------------------------------------
def media_input(spec: str, flag: str = "--input", schemes: Sequence[str] | None = None) -> None:
    """A glob, folder or manifest that lists at least one video (a glob that matches nothing is
    a mistake, not an empty run), of the allowed URI ``schemes`` (``input.schemes``): the input
    itself too, not only a manifest's lines."""
    from preprocess import sources

    if next(iter(sources.list_sources(spec, tuple(schemes) if schemes is not None else None)), None) is None:
        what = ("manifest" if sources.is_manifest(spec) else
                "glob" if sources.is_glob(spec) else "folder")
        raise CheckError(f"{flag} {spec!r}: the {what} lists no video files "
                         f"({', '.join(sources.VIDEO_SUFFIXES[:4])}, ...).")


def manifest(spec: str, columns: Sequence[str], flag: str = "--input", key: Sequence[str] = ("uri",)) -> None:
    """A .csv/.jsonl manifest that exists, parses and has at least one record with ``columns``
    (records with the same ``key`` fields are duplicates: one video dubbed with several speech
    tracks is several pairs, not a duplicate)."""
    from preprocess import sources

    if not sources.is_manifest(spec):
        raise CheckError(f"{flag}: expected a .csv/.jsonl manifest with {', '.join(columns)}. Got {spec!r}.")
    first = next(iter(sources.read_manifest(spec, key=tuple(key))), None)
    if first is None:
        raise CheckError(f"{flag} {spec!r}: the manifest has no records.")
    missing = [c for c in columns if not first.get(c)]
    if missing:
        raise CheckError(f"{flag} {spec!r}: record 1 has no {', '.join(missing)} "
                         f"(columns: {', '.join(columns)}).")


def evaluate_pairs(generated: str, reference: str | None, schemes=None) -> None:
    """``radio evaluate``'s pairs can be listed: a pairs manifest whose videos all have an allowed
    URI scheme (``input.schemes``), or a generated folder/glob and a reference folder that each
    list a video (an empty side is a mistake, not an empty run that replaces the day's run)."""
    from eval import pairs

    next(iter(pairs.list_pairs(generated, reference, schemes=schemes)), None)


def run_id(name: str) -> None:
    """A run id names one folder under ``runs/``: one plain name, no '/', '.' or '..'."""
    from preprocess import uri as uri_mod

    try:
        uri_mod.join("runs", name)
    except uri_mod.UnsafePathError as e:
        raise CheckError(f"--run-id {name!r}: {e}") from e
    if "/" in name or "\\" in name:
        raise CheckError(f"--run-id {name!r}: expected one name, without '/'.")


def exists(uri: str, flag: str, what: str) -> None:
    import fsspec

    _no_chain(uri, flag)
    fs, p = fsspec.core.url_to_fs(uri)
    if not fs.exists(p):
        raise CheckError(f"{flag} {uri!r}: no such {what}.")


def dataset(uri: str, flag: str = "--data") -> None:
    """A dataset folder (or one shard) with row shards written by ``radio preprocess``."""
    from preprocess import shards

    from preprocess import compact

    exists(uri, flag, "dataset")
    listed = shards.list_shards(uri)
    if not listed:
        raise CheckError(f"{flag} {uri!r}: no row shards ({shards.ROWS}/*.parquet); "
                         "write them with `radio preprocess --output` first.")
    try:
        compact.check_complete(uri, listed)
    except compact.CompactError as e:
        raise CheckError(f"{flag} {e}") from e


def not_compacted(uri: str, flag: str = "--output") -> None:
    """``radio preprocess`` adds per-source shards; into a compacted dataset they would duplicate the
    sources the parts already hold."""
    from preprocess import compact

    from preprocess import uri as uri_mod

    if any(uri_mod.exists(uri_mod.join(uri, name)) for name in (compact.MARKER, compact.INDEX)):
        raise CheckError(f"{flag} {uri!r} is a compacted dataset (`radio compact` output): preprocess into "
                         "the per-source dataset it was made from, then compact again.")


# ---- per command -----------------------------------------------------------------------------
def command(args: argparse.Namespace) -> None:
    """The argument checks of ``args.command`` that need no config (run before its job starts)."""
    if getattr(args, "config", None):
        exists(args.config, "--config", "config file")
    cmd = args.command
    if getattr(args, "run_id", None):
        run_id(args.run_id)
    cfg = job_config(args)
    if cmd == "preprocess":
        output_folder(args.output)
        not_compacted(args.output)
        media_input(args.input, schemes=cfg.input.schemes)
    elif cmd == "compact":
        dataset(args.input, "--input")
        output_folder(args.output)
        outside(args.output, args.input, "--output", "--input", "the compacted copy would mix with its source")
    elif cmd == "inspect":
        for flag, n in (("--rows", args.rows), ("--frames", args.frames)):
            if n < 1:
                raise CheckError(f"{flag} {n}: expected at least 1.")
        dataset(args.uri, "URI")
        if args.output:
            output_file(args.output)
    elif cmd in ("train", "train-sync"):
        output_folder(args.output)
        dataset(args.data)
        outside(args.output, args.data, "--output", "--data",
                "checkpoints and logs would land in the dataset (and be copied by `radio compact`)")
    elif cmd == "dub":
        from pipelines import dub as dub_job

        output_folder(args.output)
        # every line first (names, schemes, two lines writing one output: refused naming both lines)
        dub_job.check_pairs(args.input, args.output, getattr(args, "references", None) or cfg.dub.references,
                            tuple(cfg.input.schemes))
        manifest(args.input, ("uri", "audio_uri"), key=("uri", "audio_uri", "name"))   # as pipelines.dub
    elif cmd == "evaluate":
        output_folder(args.output)
        if args.reference:
            exists(args.reference, "--reference", "folder")
        evaluate_pairs(args.generated, args.reference, cfg.input.schemes)


def job_config(args: argparse.Namespace):
    """Load the Beam job's config (a bad key or value fails here, before inputs are listed) and
    check the landmark backend it names; returns the config (None for other commands)."""
    if args.command not in ("preprocess", "dub", "evaluate"):
        return None
    from preprocess import config as config_mod
    from radio import config_doc

    cfg = config_mod.load(config_doc.config_class(args.command), args.config, args.overrides)
    if args.command == "preprocess":
        landmark_backend(cfg.faces.backend, cfg.faces.backend_args, "faces.backend", "faces.backend_args")
    elif args.command == "dub":
        landmark_backend(cfg.dub.landmark_backend, cfg.dub.landmark_args, "dub.landmark_backend", "dub.landmark_args")
    else:
        landmark_backend(cfg.landmarks.backend, cfg.landmarks.backend_args, "landmarks.backend",
                         "landmarks.backend_args")
    return cfg


def landmark_backend(name: str, settings: dict, key: str, args_key: str) -> None:
    """A known backend; for face_alignment, its FAN and S3FD weight files configured and present."""
    from preprocess.landmarks import BACKEND_NAMES
    from preprocess.weights import WeightsError

    if name not in (*BACKEND_NAMES, "fan"):
        raise CheckError(f"{key} {name!r}: expected one of {', '.join(BACKEND_NAMES)}.")
    if name == "dlib":
        return
    for net in ("fan", "sfd"):
        uri = (settings or {}).get(f"{net}_uri")
        what = f"face_alignment {net.upper()} weights ({args_key}.{net}_uri)"
        if not uri:
            raise WeightsError(f"{what} not set (the README's Weights section says how), or use {key}=dlib.")
        import fsspec

        fs, p = fsspec.core.url_to_fs(uri)
        if not fs.exists(p):
            raise WeightsError(f"{what}: weight file not found at {uri!r}.")


def train(cfg, command: str) -> None:
    """The batch splits over the ranks (torchrun's WORLD_SIZE) and accumulation steps; weights the
    training run will load, configured and present (their sha256 is checked when they load, still
    before any step)."""
    from preprocess.weights import WeightsError
    from radio.train.config import micro_batch
    from radio.train.dist import env_info

    micro_batch(cfg.sync_pretrain.batch if command == "train-sync" else cfg.run.batch, env_info().world,
                cfg.run.accumulate)

    needs = []
    if command == "train" and cfg.loss.perceptual > 0:
        from radio.losses import VGG_HOW_TO_GET

        needs.append(("VGG19 (perceptual loss)", cfg.loss.vgg_uri, "loss.vgg_uri", VGG_HOW_TO_GET))
    if command == "train" and cfg.loss.sync > 0:
        needs.append(("sync discriminator S (sync loss)", cfg.loss.sync_uri, "loss.sync_uri",
                      "Train it with `radio train-sync` and set loss.sync_uri/loss.sync_sha256, "
                      "or set loss.sync=0."))
    for name, uri, key, how in needs:
        if not uri:
            raise WeightsError(f"{name}: {key} is not set. {how}")
        import fsspec

        fs, p = fsspec.core.url_to_fs(uri)
        if not fs.exists(p):
            raise WeightsError(f"{name}: {key} {uri!r}: weight file not found. {how}")


# ---- options ---------------------------------------------------------------------------------
def _beam_parser():
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    seen = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)  # what PipelineOptions.get_all_options does
    return parser


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings if s.startswith("--")]


def unknown_options(extra: Sequence[str], radio_parser: argparse.ArgumentParser | None,
                    *, beam: bool) -> None:
    """Raise for the first argument in ``extra`` (what radio's parser left) that Beam's pipeline
    options do not know either (``beam=False``: every one), naming the closest radio option."""
    if not extra:
        return
    unknown = list(extra)
    if beam:
        _known, unknown = _beam_parser().parse_known_args(list(extra))
    if not unknown:
        return
    arg = unknown[0]
    if not arg.startswith("-"):
        raise CheckError(f"unexpected argument {arg!r} (options start with --; see --help).")
    flag = arg.split("=", 1)[0]
    hint = "; see --help"
    close = closest(flag, _flags(radio_parser) if radio_parser is not None else [],
                    _flags(_beam_parser()) if beam else [])
    if close:
        hint = f"; did you mean {close}?"
    where = "radio or Apache Beam" if beam else "radio"
    raise CheckError(f"unknown option {flag} (not a {where} option){hint}")


def closest(flag: str, radio_flags: Sequence[str], beam_flags: Sequence[str] = ()) -> str | None:
    """The most similar known flag (difflib ratio >= 0.7); a radio flag wins a tie."""
    best, score = None, 0.7
    for cand in [*radio_flags, *beam_flags]:
        r = difflib.SequenceMatcher(None, flag, cand).ratio()
        if r > score:
            best, score = cand, r
    return best
