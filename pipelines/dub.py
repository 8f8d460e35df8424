"""Beam pipeline: bulk dubbing of (video, speech) pairs with a trained RADIO checkpoint.

    ListPairs -> Reshuffle -> DubPair (skips what is finished) -+-> Summarise -----------> WriteSummary
                                                                +-> pairs.jsonl, evaluate_pairs.jsonl -^

Nothing gathers every pair in one place: the summary's combiner keeps counts and the first 1,000
pair lines by name; each pair's line and evaluation rows stream into JSON-lines files.

Input: a manifest (.csv / .jsonl) with ``uri`` (video), ``audio_uri`` (speech) and optionally
``name`` (relative output name, checked: no '..', no absolute path). Output folder:

    OUTPUT/videos/<name>.mp4            dubbed videos (reference 0: the first face frame)
    OUTPUT/videos/<name>.ref<k>.mp4     with ``--references K``: reference k = 1..K-1
    OUTPUT/done/<pair key>.json         one result per pair (status, frames, rates, or the reject)
    OUTPUT/evaluate_pairs.jsonl         every dubbed video against its source video, ready for
                                        ``radio evaluate --generated OUTPUT/evaluate_pairs.jsonl``
                                        (keys ``<name>#ref<k>`` with K > 1: reference spread)
    OUTPUT/runs/<run_id>/summary.json   counts that add up: pairs = dubbed + rejected + skipped,
                                        and the first 1,000 pairs by name
    OUTPUT/runs/<run_id>/pairs.jsonl    one line per pair (status, fps, frames, audio, or the reason)

**What a pair is.** A pair is its output name (two manifest lines with the same output name are
refused before any work, naming both lines). What made its output is recorded in its done marker
and in each video's metadata (``comment``): the video and speech URIs and fingerprints of their
content (size + mtime of a local file; generation / etag / md5 / size of a remote one), the checkpoint's sha256
and the dub settings that change the output (``radio.dub.output_config``; not batch sizes or
threads). With ``--resume`` (the default) a pair is skipped only when its marker was made by
exactly that; anything else — another checkpoint, other settings, other inputs, or a video
without a marker — is dubbed again and its earlier outputs are replaced whole, atomically (the
summary counts these as ``replaced``). Only a successful dub replaces or removes earlier outputs: a
pair rejected now keeps them (its marker lists them as ``earlier_outputs``). ``--no-resume`` dubs every
pair again; ``--retry-rejects`` dubs rejected pairs again.

Up front, before any work (one line, exit 2): the manifest (every line; URI schemes in
``input.schemes``), output names (no two lines writing one file, any reference's), the checkpoint
(exists, sha256 pinned and equal, loads as a RADIO generator) and the landmark backend's weights.
Per pair, ``limits`` (as preprocess) refuse a file too large to copy, or a video too large or too long
from its probe (rejects ``too_large`` / ``too_long``).

The checkpoint and landmark backend load once per worker (``setup``), on the GPU when the worker
has one. Per-pair work is ``radio.dub.dub_uris``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import posixpath
import re
import time
import traceback
from dataclasses import dataclass, field

import apache_beam as beam
import fsspec
from apache_beam.metrics import Metrics

from eval import pairs as pairs_mod
from pipelines import jobrun
from preprocess import config as config_mod
from preprocess import catalog, outlock, shards, sources
from preprocess import uri as uri_mod
from preprocess.errors import UserError
from preprocess.failures import is_environment_error
from preprocess.media import MediaError
from preprocess.source import InputConfig, LimitsConfig
from radio.dub import DubConfig, DubError, output_config

log = logging.getLogger(__name__)
NS = "radio.dub"
MANIFEST_KEY = ("uri", "audio_uri", "name")
EVAL_MANIFEST = pairs_mod.DUB_MANIFEST   # each output against its source video, for radio evaluate


class DubInputError(UserError, ValueError):
    """A dub job that cannot start: bad manifest names, checkpoint or weights."""


@dataclass
class DubJobConfig:
    dub: DubConfig = field(default_factory=DubConfig)
    input: InputConfig = field(default_factory=InputConfig)     # URI schemes videos and speech may have
    limits: LimitsConfig = field(default_factory=LimitsConfig)  # what a video or speech file may declare
    checkpoint_sha256: str | None = None        # sha256 of --checkpoint (sha256sum RUN/radio.pt)
    allow_unverified_checkpoint: bool = False   # accept a checkpoint without a pinned sha256
    device: str = "auto"                        # auto | cpu | cuda


def pair_id(item: dict) -> str:
    return hashlib.sha1(f"{item['uri']}\n{item.get('audio_uri')}".encode()).hexdigest()[:16]


def name_of(value) -> str | None:
    """A manifest ``name`` as text (a JSON number such as 5 is the name "5"); ValueError when it is
    not a string or a number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"'name' must be a string. Got {value!r}.")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip() or None


def output_name(item: dict) -> str:
    """The pair's output name under videos/ (``name`` or the pair id, with .mp4)."""
    name = name_of(item.get("name")) or pair_id(item)
    return name if name.endswith(".mp4") else name + ".mp4"


def output_uris(output: str, item: dict, references: int = 1) -> list[str]:
    """videos/<name>.mp4 for reference 0, videos/<name>.ref<k>.mp4 for the others."""
    name = output_name(item)
    stem = name[:-len(".mp4")]
    return [uri_mod.join(output, "videos", name if k == 0 else f"{stem}.ref{k}.mp4") for k in range(references)]


def pair_key(item: dict) -> str:
    return hashlib.sha1(output_name(item).encode()).hexdigest()[:16]


def done_uri(output: str, item: dict) -> str:
    return uri_mod.join(output, "done", f"{pair_key(item)}.json")


def identity(item: dict, checkpoint_sha256: str, cfg: DubConfig) -> dict:
    """What makes a pair's outputs: inputs (URIs and content fingerprints), checkpoint and the
    output-affecting dub settings (a marker from before fingerprints: :func:`legacy_stands`)."""
    ident = {"video": item["uri"], "audio": item.get("audio_uri"), "checkpoint_sha256": checkpoint_sha256,
             "dub": output_config(cfg), "video_fingerprint": catalog.fingerprint(item["uri"]),
             "audio_fingerprint": catalog.fingerprint(item.get("audio_uri"))}
    ident["made_by"] = _made_by(ident)
    return ident


def _made_by(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def modified(uri: str | None) -> float | None:
    """When a file last changed (POSIX seconds), None when unknown or missing."""
    if not uri:
        return None
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        return fs.modified(path).timestamp()
    except (FileNotFoundError, NotImplementedError, AttributeError, ValueError, OSError):
        return None


def legacy_stands(marker: dict | None, marker_uri: str, ident: dict) -> bool:
    """A marker written before input fingerprints existed (no ``video_fingerprint``) stands when it
    was made by the same URIs, checkpoint and settings and neither input changed after the marker
    was written (both older than it); else its pair is dubbed again. So an upgrade does not redo a
    whole output, and a file changed since is still caught."""
    if not marker or "video_fingerprint" in marker:
        return False
    if marker.get("made_by") != _made_by({k: ident[k] for k in ("video", "audio", "checkpoint_sha256", "dub")}):
        return False
    written = modified(marker_uri)
    inputs = [modified(u) for u in (ident["video"], ident["audio"])]
    return written is not None and all(t is not None and t < written for t in inputs)


def _read_marker(uri: str) -> dict | None:
    try:
        return json.loads(uri_mod.read_bytes(uri))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def finished(marker: dict | None, made_by: str, retry_rejects: bool, outs: list[str] | None = None) -> bool:
    """Whether an earlier result can stand: made by exactly this, and complete — its outputs are
    ``outs``, the files this run would write (a marker copied or reached under another spelling of
    the output names files elsewhere), and they exist."""
    if not marker or marker.get("made_by") != made_by:
        return False
    if marker.get("status") == "dubbed":
        named, sizes = marker.get("outputs", []), marker.get("output_sizes")
        now = [_size(u) for u in named]            # one metadata request per output
        return ((outs is None or named == outs) and None not in now
                and (sizes is None or now == sizes))   # files, not cut, not replaced
    return marker.get("status") == "rejected" and not retry_rejects


def _is_file(uri: str) -> bool:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs.isfile(path)


def _size(uri: str) -> int | None:
    """The size of the file ``uri``; None when there is none (missing, or a folder)."""
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        info = fs.info(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(info["size"]) if info.get("type") == "file" else None


def _parents_under(uri: str, output: str) -> list[str]:
    """The folders between ``OUTPUT/videos/`` and ``uri``: ``videos/a/b/c.mp4`` -> videos/a, videos/a/b."""
    videos = uri_mod.join(output, "videos")
    parts = uri[len(videos) + 1:].split("/")[:-1]
    return [uri_mod.join(videos, *parts[:k]) for k in range(1, len(parts) + 1)]


def stale_outputs(earlier: list[str], outs: list[str], output: str) -> list[str]:
    """Files an earlier make of a pair wrote that this one does not overwrite (it had more references):
    only those under this run's ``OUTPUT/videos/`` and never one that is a new output under another
    spelling (a symlinked output folder). A marker copied with its output, or reached through another
    path, names files elsewhere: they are never touched."""
    videos = uri_mod.join(output, "videos") + "/"
    mine = [u for u in earlier if u.startswith(videos) and u not in outs]
    new = {uri_mod.canonical(u) for u in outs}
    return sorted(u for u in mine if uri_mod.canonical(u) not in new)


def earlier_outputs(marker: dict | None) -> list[str]:
    """The output files an earlier marker names: its own outputs, or (a reject) those it kept."""
    marker = marker or {}
    return [*marker.get("outputs", []), *marker.get("earlier_outputs", [])]


class DubPairFn(beam.DoFn):
    def __init__(self, checkpoint: str, checkpoint_sha256: str, cfg: dict, output: str, *, resume: bool,
                 retry_rejects: bool):
        self.checkpoint, self.checkpoint_sha256, self.cfg_dict, self.output = checkpoint, checkpoint_sha256, cfg, output
        self.resume, self.retry_rejects = resume, retry_rejects
        self.dubbed = Metrics.counter(NS, "pairs_dubbed")
        self.rejected = Metrics.counter(NS, "pairs_rejected")
        self.skipped = Metrics.counter(NS, "pairs_skipped_resume")
        self.frames = Metrics.counter(NS, "frames")

    def setup(self):
        import torch

        from preprocess.landmarks import get_backend
        from radio.train.checkpoint import load_generator

        self.cfg = config_mod.from_dict(DubJobConfig, self.cfg_dict)
        dev = self.cfg.device
        self.device = torch.device("cuda" if dev == "auto" and torch.cuda.is_available() else
                                   ("cpu" if dev == "auto" else dev))
        self.model = load_generator(self.checkpoint, self.checkpoint_sha256).to(self.device)
        from preprocess import writer as writer_mod
        from radio.dub import TEMP_PREFIX

        writer_mod.remove_stale_local(TEMP_PREFIX)   # this worker's machine: folders of killed runs only
        uri_mod.remove_stale_copies()                # and their copies of remote inputs
        self.backend = get_backend(self.cfg.dub.landmark_backend, **self.cfg.dub.landmark_args)

    def _owned_by_another_pair(self, uri: str) -> bool:
        """Whether ``videos/<rel>.mp4`` is the video of the pair named ``<rel>`` (its marker names it)."""
        rel = uri[len(uri_mod.join(self.output, "videos")) + 1:]
        marker = _read_marker(done_uri(self.output, {"name": rel}))
        return bool(marker) and any(uri_mod.canonical(uri) == uri_mod.canonical(o) for o in earlier_outputs(marker))

    def process(self, item: dict):
        from radio.dub import dub_uris

        ident = identity(item, self.checkpoint_sha256, self.cfg.dub)
        marker_uri = done_uri(self.output, item)
        earlier = _read_marker(marker_uri)
        outs = output_uris(self.output, item, self.cfg.dub.references)
        if self.resume and legacy_stands(earlier, marker_uri, ident) and finished(
                earlier, earlier["made_by"], self.retry_rejects, outs):
            earlier = dict(earlier, **ident)          # the marker now records the fingerprints it stands for
            uri_mod.write_bytes_atomic(marker_uri, json.dumps(earlier, sort_keys=True).encode())
        if self.resume and finished(earlier, ident["made_by"], self.retry_rejects, outs):
            if earlier.get("status") == "dubbed" and "output_sizes" not in earlier:   # an older marker:
                earlier = dict(earlier, output_sizes=[_size(u) for u in outs])         # from now on checked
                uri_mod.write_bytes_atomic(marker_uri, json.dumps(earlier, sort_keys=True).encode())
            self.skipped.inc()
            yield dict(earlier, status_now="skipped")
            return
        result = {"pair_id": pair_id(item), "pair_key": pair_key(item), "name": output_name(item),
                  "uri": item["uri"], "audio_uri": item.get("audio_uri"), **ident}
        replaces = (any(uri_mod.exists(u) for u in outs)
                    and not (earlier and earlier.get("made_by") == ident["made_by"]))
        try:
            if not item.get("audio_uri"):
                raise DubError("input", "no_audio_uri", "manifest row has no audio_uri")
            folders = [u for u in outs if _size(u) is None and uri_mod.exists(u)]
            if folders:   # another pair's name made it a folder (x.mp4/y): the video would land inside
                raise DubError("output", "output_is_a_folder", f"{folders[0]} is a folder (another pair's "
                               "output name puts files under it); rename one of the pairs")
            files = [p for p in _parents_under(outs[0], self.output) if _is_file(p)]
            if files:     # an earlier run's pair 'x' wrote videos/x.mp4; this pair is named 'x.mp4/y'
                raise DubError("output", "output_parent_is_a_file", f"{files[0]} is another pair's video; "
                               "rename this pair so that its output does not nest under it")
            comment = json.dumps({k: ident[k] for k in ("made_by", "checkpoint_sha256", "dub")}, sort_keys=True)
            stats = dub_uris(item["uri"], item["audio_uri"], outs, self.model, self.backend, self.cfg.dub,
                             self.device, comment, limits=self.cfg.limits, schemes=tuple(self.cfg.input.schemes))
            result.update(status="dubbed", outputs=outs, output_sizes=[_size(u) for u in outs], replaced=replaces,
                          **stats)
            self.dubbed.inc()
            self.frames.inc(stats["frames"] * len(outs))
        except (DubError, MediaError) as e:  # a fact about this pair: a typed reject, the job goes on
            # (anything else — no space, I/O, out of memory — propagates: the runner retries the pair)
            stage, reason = e.stage, e.reason
            result.update(status="rejected", stage=stage, reason=reason, error_type=type(e).__name__,
                          message=traceback.format_exception_only(type(e), e)[-1].strip()[:2000])
            self.rejected.inc()
            Metrics.counter(NS, f"rejects_{reason}").inc()
        earlier_outs = stale_outputs(earlier_outputs(earlier), [], self.output)   # this output's only
        if result["status"] == "dubbed":
            # outputs of an earlier, different make that this one does not overwrite (fewer references)
            for stale in stale_outputs(earlier_outs, outs, self.output):
                if self._owned_by_another_pair(stale):   # a.ref1.mp4 of an earlier 'a' is now pair 'a.ref1''s
                    continue
                uri_mod.remove_if_exists(stale)   # as named: rm() expanded 'a[1].ref1.mp4' to a1.ref1.mp4
        else:
            # a reject removes nothing: earlier outputs stay until a successful dub replaces them, and
            # the marker keeps naming them (so that dub can remove the ones it does not overwrite)
            kept = sorted(u for u in earlier_outs if uri_mod.exists(u))
            if kept:
                result["earlier_outputs"] = kept
        uri_mod.write_bytes_atomic(marker_uri, json.dumps(result, sort_keys=True).encode())
        yield dict(result, status_now=result["status"])


def pair_line(r: dict) -> dict:
    """What the summary lists of one pair (``now``: what this run did with it). A reject's line says which
    input and why (``stage``, ``message``: 'probe/not_found: no such file [the video]'); ``audio`` is what a
    dubbed output carries ('copy', 'aac 128k'); a reject's marker holds the speech URI under that key, which
    read as the file a 'not_found' was about when the video was missing."""
    keys = ("name", "status", "reason", "source_fps", "output_fps", "frames", "video_frames", "width", "height",
            "audio_rate", "audio_channels", "audio", "references", "replaced")
    line = dict({k: r[k] for k in keys if k in r}, now=r["status_now"])
    if r.get("status") == "rejected":
        line.pop("audio", None)
        line.update(stage=r.get("stage"), message=str(r.get("message") or "")[:300])
    return line


#: pairs listed in summary.json (the first by name); every pair's line is in runs/<run_id>/pairs.jsonl
MAX_LISTED_PAIRS = 1000


def _first(lines: list[dict]) -> list[dict]:
    return sorted(lines, key=lambda r: r["name"])[:MAX_LISTED_PAIRS]


class _Count(beam.CombineFn):
    """Counts per status and reason, and the first ``MAX_LISTED_PAIRS`` pair lines by name: bounded
    whatever the number of pairs (each pair's line and evaluation rows are written as files)."""

    def create_accumulator(self):
        return {"dubbed": 0, "rejected": 0, "skipped": 0, "replaced": 0, "frames": 0, "rejects_by_reason": {},
                "pairs_list": []}

    def add_input(self, acc, r):
        acc[r["status_now"]] += 1
        if r["status_now"] != "skipped":
            acc["frames"] += r.get("frames", 0) * len(r.get("outputs", [])) if r["status"] == "dubbed" else 0
            acc["replaced"] += int(bool(r.get("replaced")))
        if r["status_now"] == "rejected":
            acc["rejects_by_reason"][r["reason"]] = acc["rejects_by_reason"].get(r["reason"], 0) + 1
        acc["pairs_list"].append(pair_line(r))
        if len(acc["pairs_list"]) > 2 * MAX_LISTED_PAIRS:
            acc["pairs_list"] = _first(acc["pairs_list"])
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for a in accs:
            for k in ("dubbed", "rejected", "skipped", "replaced", "frames"):
                out[k] += a[k]
            for k, v in a["rejects_by_reason"].items():
                out["rejects_by_reason"][k] = out["rejects_by_reason"].get(k, 0) + v
            out["pairs_list"] = _first(out["pairs_list"] + a["pairs_list"])
        return out

    def extract_output(self, acc):
        return dict(acc, pairs_list=_first(acc["pairs_list"]))


def eval_rows(r: dict) -> list[dict]:
    """The ``radio evaluate`` manifest lines of one dubbed pair: each output against its source video."""
    if r["status"] != "dubbed":
        return []
    outs = r["outputs"]
    stem = r["name"][:-len(".mp4")]
    return [{"generated": u, "reference": r["uri"], "key": stem if len(outs) == 1 else f"{stem}#ref{k}"}
            for k, u in enumerate(outs)]


def _jsonl(rows, *, output: str, name: str):
    """Rows -> one JSON-lines file ``output/name``, streamed (never gathered in memory), written
    under a temporary name and moved into place by Beam's file sink."""
    stem, suffix = posixpath.splitext(name)
    return (rows
            | f"Json{stem}" >> beam.Map(lambda r: json.dumps(r, sort_keys=True))
            | f"Write{stem}" >> beam.io.WriteToText(uri_mod.join(output, stem), file_name_suffix=suffix,
                                                    num_shards=1, shard_name_template=""))


def write_summary(a: dict, n_listed: int, written: list, *, output: str, run_id: str, checkpoint: str,
                  checkpoint_sha256: str, cfg: dict, started: float) -> dict:
    """summary.json (in the run folder and at the top). ``written`` (the JSON-lines files, a side
    input) is not read: it makes the summary the last thing written."""
    s = dict(a, run_id=run_id, pairs=n_listed, skipped_resume=a.pop("skipped"), output=output,
             checkpoint=checkpoint, checkpoint_sha256=checkpoint_sha256, config=cfg,
             pairs_file=uri_mod.join(output, "runs", run_id, "pairs.jsonl"),
             evaluate_manifest=uri_mod.join(output, EVAL_MANIFEST), wall_seconds=round(time.time() - started, 2))
    s["counts_add_up"] = s["pairs"] == s["dubbed"] + s["rejected"] + s["skipped_resume"]
    data = json.dumps(s, indent=2, sort_keys=True).encode()
    uri_mod.write_bytes_atomic(uri_mod.join(output, "runs", run_id, "summary.json"), data)
    uri_mod.write_bytes_atomic(uri_mod.join(output, "summary.json"), data)
    return s


def build(p, manifest: str, checkpoint: str, output: str, cfg: dict, *, run_id: str, resume: bool,
          retry_rejects: bool = False, checkpoint_sha256: str, started: float, progress_dir: str | None = None):
    items = (p | "Manifest" >> beam.Create([manifest])
               | "ListPairs" >> beam.FlatMap(sources.read_manifest, key=MANIFEST_KEY,
                                             schemes=tuple(cfg["input"]["schemes"])))
    listed = items | "CountListed" >> beam.combiners.Count.Globally()
    results = (items
               | "Reshuffle" >> beam.Reshuffle()
               | "DubPair" >> beam.ParDo(jobrun.Tracked(
                   DubPairFn(checkpoint, checkpoint_sha256, cfg, output, resume=resume, retry_rejects=retry_rejects),
                   describe=jobrun.uri_of, frames=jobrun.frames_of, progress_dir=progress_dir)))
    written = (_jsonl(results | "PairLines" >> beam.Map(pair_line),
                      output=uri_mod.join(output, "runs", run_id), name="pairs.jsonl"),
               _jsonl(results | "EvalRows" >> beam.FlatMap(eval_rows), output=output, name=EVAL_MANIFEST))
    acc = results | "Summarise" >> beam.CombineGlobally(_Count())
    return acc | "WriteSummary" >> beam.Map(
        write_summary, n_listed=beam.pvalue.AsSingleton(listed),
        written=beam.pvalue.AsList(written | "Written" >> beam.Flatten()), output=output, run_id=run_id,
        checkpoint=checkpoint, checkpoint_sha256=checkpoint_sha256, cfg=cfg, started=started)


def remove_stale_temporaries(output: str) -> list[str]:
    """Delete what killed runs left, with preprocess's rules: this machine's ``$TMPDIR/radio-dubout-*``
    folders whose run is dead (their lock is free; a folder in use holds it), and in the output
    folder Beam's ``beam-temp-*`` folders (evaluate_pairs.jsonl, runs/*/pairs.jsonl) and hidden
    ``.tmp-*`` uploads. Call it before a run starts: two runs writing one output at the same time
    are not supported (as two preprocess runs writing one dataset)."""
    from preprocess import writer as writer_mod
    from radio.dub import TEMP_PREFIX

    removed = writer_mod.remove_stale_local(TEMP_PREFIX)
    fs, root = fsspec.core.url_to_fs(output)
    root = root.rstrip("/")
    runs = [posixpath.relpath(p, root) for p in (fs.ls(f"{root}/runs", detail=False)
                                                 if fs.isdir(f"{root}/runs") else []) if fs.isdir(p)]
    removed += shards.remove_named(output, ["", "done", "runs", *runs], (".tmp-", "beam-temp-"))
    if fs.isdir(f"{root}/videos"):   # names may hold folders (a/b.mp4)
        for p in sorted(fs.find(f"{root}/videos", withdirs=False)):
            if posixpath.basename(p.rstrip("/")).startswith(".tmp-"):
                uri_mod.remove_file(fs, p)
                removed.append(p)
    if removed:
        log.info("removed %d temporaries of killed runs (%s)", len(removed), ", ".join(removed[:5]))
    return removed


# ------------------------------------------------------------------------------ up-front checks
def check_output(output: str) -> None:
    """The pair lines and evaluation rows go through Beam's file sink: the output must be a file
    system Beam knows (local paths, gs://; s3:// etc. with their Beam extras)."""
    from apache_beam.io.filesystems import FileSystems

    try:
        FileSystems.get_filesystem(output)
    except ValueError as e:
        raise DubInputError(f"--output {output}: Beam cannot write there (it knows local paths and gs://, "
                            "s3:// with apache-beam[aws]).") from e


def check_pairs(manifest: str, output: str, references: int = 1, schemes=None) -> list[dict]:
    """The manifest's pairs, every line checked before any work: a JSON object / CSV row, ``uri``
    and ``audio_uri`` strings with a scheme in ``schemes`` (``input.schemes``), a ``name`` that is
    text or a number and a safe relative path, no part of it hidden ('.'); and no two lines writing one output file — any of the
    ``references`` outputs of each (``a`` with K=2 writes ``a.ref1.mp4``, which a pair named
    ``a.ref1`` writes too), nor an exact duplicate line. Refusals name the line(s)."""
    if not sources.is_manifest(manifest):
        raise sources.SourceError(f"Expected a .csv/.jsonl manifest with uri,audio_uri. Got {manifest!r}.")
    errors: list[str] = []
    numbered = []
    base = posixpath.dirname(manifest)
    for line, rec in sources.numbered_records(manifest, errors):
        try:
            item = sources.checked_record(rec, base, schemes)  # as read_manifest checks and resolves it
            if not item.get("audio_uri"):
                raise ValueError("no 'audio_uri' (the speech to dub the video with)")
            item["name"] = name_of(item.get("name"))
            if sources.hidden(item["name"] or ""):
                raise ValueError(f"output name {item['name']!r}: a part starts with '.' (hidden files and "
                                 "'.tmp-*' are temporaries a later run removes); name it without")
            if item["name"] and item["name"].endswith("/"):
                raise ValueError(f"output name {item['name']!r} ends with '/': it names a folder, not a video")
        except ValueError as e:
            errors.append(f"{manifest}:{line}: {e}")
            continue
        numbered.append((line, item))
    if errors:
        more = f" (+{len(errors) - 1} more bad line(s))" if len(errors) > 1 else ""
        raise sources.SourceError(errors[0] + more)
    if not numbered:
        raise DubInputError(f"{manifest}: no pairs.")
    seen: dict[str, int] = {}
    videos = uri_mod.join(output, "videos")
    for line, item in numbered:
        try:
            outs = output_uris(output, item, references)
        except uri_mod.UnsafePathError as e:
            raise DubInputError(f"{manifest}:{line}: output name {item.get('name')!r}: {e}") from e
        for out in outs:
            if out in seen:
                raise DubInputError(f"{manifest}: lines {seen[out]} and {line} both write "
                                    f"videos/{out[len(videos) + 1:]}; give each pair its own name.")
            seen[out] = line
            long = [p for p in out[len(videos) + 1:].split("/") if len(p.encode()) > uri_mod.NAME_MAX]
            if long and uri_mod.is_local(output):   # found after the dub (ENAMETOOLONG) otherwise
                raise DubInputError(f"{manifest}:{line}: output name {item.get('name')!r}: {long[0]!r} is "
                                    f"{len(long[0].encode())} bytes, more than a file name may have "
                                    f"({uri_mod.NAME_MAX}); shorten the name.")
    folders = {}                 # 'x.mp4/y' makes videos/x.mp4 a folder: the pair named 'x' could not write it
    for out, line in seen.items():
        parts = out[len(videos) + 1:].split("/")
        for k in range(1, len(parts)):
            folders.setdefault("/".join(parts[:k]), line)
    for out, line in seen.items():
        rel = out[len(videos) + 1:]
        if rel in folders:
            raise DubInputError(f"{manifest}: line {line} writes videos/{rel}, which line {folders[rel]} makes a "
                                "folder; give the pairs names that do not nest.")
    return [item for _, item in numbered]


def check_checkpoint(checkpoint: str, job: DubJobConfig) -> str:
    """The checkpoint's sha256, once it is found, matches its pin and loads as a RADIO generator."""
    from preprocess.weights import WeightsError, resolve_weights
    from radio.train.checkpoint import load_generator

    pin = job.checkpoint_sha256
    if pin is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", str(pin)):
        raise DubInputError(f"checkpoint_sha256: expected 64 hex digits (quote it: an all-digit value reads as a "
                            f"number). Got {pin!r}.")
    try:
        found = resolve_weights(checkpoint, job.checkpoint_sha256, name="RADIO checkpoint",
                                allow_unverified=job.allow_unverified_checkpoint,
                                how_to_get="Give a `radio train` output's radio.pt (or checkpoints/step-N.pt), pinned with "
                                           "--set checkpoint_sha256=<sha256 of the file>.")
        load_generator(found.path, found.sha256)
    except WeightsError as e:
        raise DubInputError(str(e)) from e
    except Exception as e:  # not a RADIO checkpoint (pickle, keys, shapes): say so in one line
        if is_environment_error(e):   # the network or the disk, not the file: not the user's mistake
            raise
        raise DubInputError(f"RADIO checkpoint {checkpoint!r} does not load: "
                            f"{traceback.format_exception_only(type(e), e)[-1].strip()[:300]}") from e
    return found.sha256


def check_landmarks(job: DubJobConfig) -> None:
    from preprocess.landmarks import get_backend

    try:
        get_backend(job.dub.landmark_backend, **job.dub.landmark_args)
    except Exception as e:  # missing weights or bad settings: one line
        raise DubInputError(f"landmark backend {job.dub.landmark_backend!r}: "
                            f"{traceback.format_exception_only(type(e), e)[-1].strip()[:300]}") from e


def run(manifest: str, checkpoint: str, output: str, pipeline_args=(), *, config_path=None, overrides=(),
        run_id: str | None = None, resume: bool = True, retry_rejects: bool = False, references: int | None = None,
        progress: bool = False, test_pipeline=None) -> dict:
    from pipelines import options as options_mod

    started = time.time()
    if references is not None:
        overrides = [*overrides, f"dub.references={references}"]
    job_cfg = config_mod.load(DubJobConfig, config_path, overrides)
    cfg = config_mod.to_dict(job_cfg)
    run_id = run_id or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    if "://" not in output:
        output = os.path.abspath(output)  # outputs are named in evaluate_pairs.jsonl by full path
    summary_uri = uri_mod.join(output, "runs", run_id, "summary.json")
    check_output(output)
    pairs = check_pairs(manifest, output, job_cfg.dub.references, tuple(job_cfg.input.schemes))
    sha = check_checkpoint(checkpoint, job_cfg)
    check_landmarks(job_cfg)
    if test_pipeline is not None:
        p, is_local = test_pipeline, True
    else:
        job = options_mod.build(pipeline_args, job_name=f"radio-dub-{run_id.lower()}",   # no more local
                                workers=max(1, min(len(pairs), os.cpu_count() or 1)),  # workers than pairs
                                reach=[("--input", manifest), ("--checkpoint", checkpoint), ("--output", output),
                                       *((f"{manifest}: {k}", it.get(k))
                                         for it in pairs for k in ("uri", "audio_uri"))])
        p, is_local = beam.Pipeline(runner=job.runner, options=job.options), job.is_local
    with outlock.hold(output, "dub"):   # one run per output: its clean-up would delete a live run's files
        remove_stale_temporaries(output)
        folder = jobrun.progress_folder(is_local, progress)
        build(p, manifest, checkpoint, output, cfg, run_id=run_id, resume=resume, retry_rejects=retry_rejects,
              checkpoint_sha256=sha, started=started, progress_dir=folder)
        bar = None
        if folder:   # pairs finished earlier pass through at once
            bar = jobrun.Bar(folder, len(pairs), unit="pair", desc="dub", stream=None,
                             workers=options_mod.local_workers(p.options))
        jobrun.run(p, log_uri=uri_mod.join(output, "runs", run_id, "job.log"), is_local=is_local, bar=bar,
                   namespace=NS)
    return json.loads(uri_mod.read_bytes(summary_uri))


def format_summary(s: dict, max_pairs: int = 20) -> str:
    lines = [f"run {s['run_id']}: {s['pairs']} pairs = {s['dubbed']} dubbed + {s['rejected']} rejected + "
             f"{s['skipped_resume']} finished earlier (same checkpoint and settings); {s['frames']} frames"
             + ("" if s["counts_add_up"] else "  (DOES NOT ADD UP)")]
    if s.get("replaced"):
        lines.append(f"  {s['replaced']} earlier outputs made otherwise (checkpoint, settings or inputs) replaced")
    if s["rejects_by_reason"]:
        lines.append("  rejects: " + ", ".join(f"{k} {v}" for k, v in sorted(s["rejects_by_reason"].items())))
    lines.append(f"  checkpoint sha256 {s['checkpoint_sha256'][:16]}…")
    for r in s["pairs_list"][:max_pairs]:
        if r["status"] == "dubbed":
            lines.append(f"  {r['name']}: {r['now']}, {r['source_fps']:g} -> {r['output_fps']} fps, "
                         f"{r['frames']} frames, {r['width']}x{r['height']}, audio {r['audio_rate']} Hz "
                         f"{r['audio_channels']} ch ({r['audio']})"
                         + (f", {len(r['references'])} references" if len(r.get("references", [])) > 1 else ""))
        else:
            lines.append(f"  {r['name']}: rejected ({r.get('reason')})")
    shown = min(max_pairs, len(s["pairs_list"]))
    if s["pairs"] > shown:
        lines.append(f"  … {s['pairs'] - shown} more pair{'s' if s['pairs'] - shown != 1 else ''} in {s['pairs_file']}")
    lines.append(f"  videos: {uri_mod.join(s['output'], 'videos')}   evaluate: {s['evaluate_manifest']}")
    return "\n".join(lines)


def main(args, beam_args) -> int:
    s = run(args.input, args.checkpoint, args.output, beam_args, config_path=args.config,
            overrides=args.overrides, run_id=args.run_id, resume=not getattr(args, "no_resume", False),
            retry_rejects=getattr(args, "retry_rejects", False), references=getattr(args, "references", None),
            progress=not getattr(args, "no_progress", False))
    print(format_summary(s))
    return 0 if s["counts_add_up"] else 1
