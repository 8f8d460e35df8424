"""Checkpoints of a training run, written atomically under ``<output>/checkpoints/``.

A training checkpoint ``step-000002000.pt`` is one ``torch.save``d dict of tensors and plain
Python values only (``torch.load(weights_only=True)`` reads it):

    format  'radio-train/1'        kind   'radio' | 'sync'
    step    int                    config the whole TrainConfig as a plain dict
    models  {name: state_dict}     ('generator', 'ema', 'disc') or ('sync',)
    optim   {name: state_dict}     ('g', 'd') or ('sync',)
    rng     [{'torch': ByteTensor, 'cuda': [ByteTensor]}] one entry per rank
    data    {'consumers': n, 'cursors': [[consumer, epoch, chunk, offset], ...]}

Next to the checkpoints the run keeps an export for the other jobs, rewritten at every save:
``<output>/radio.pt`` (EMA generator: format 'radio-generator/1', model_config, model, step) for
``radio dub``, and ``<output>/sync.pt`` (format 'radio-sync/1', model_config, sync, step) for
``loss.sync_uri`` of ``radio train``.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import logging
import re

import fsspec
import torch

from preprocess import failures
from preprocess import uri as uri_lib
from preprocess.config import from_dict as _from_dict
from preprocess.errors import JobFailed, UserError
from preprocess.weights import resolve_weights
from radio.model.config import ModelConfig

from . import guard

log = logging.getLogger("radio.train")

FORMAT = "radio-train/1"
CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"step-(\d+)\.pt$")
SYNC_HOW_TO_GET = ("Pretrain S with `radio train-sync --data DATASET --output RUN` and set loss.sync_uri to "
                   "RUN/sync.pt and loss.sync_sha256 to the sha256 it logs (sha256sum RUN/sync.pt); or set "
                   "loss.sync=0 to train without the sync loss.")


def checkpoint_uri(output: str, step: int) -> str:
    return uri_lib.join(output, CHECKPOINTS, f"step-{step:09d}.pt")


def list_checkpoints(output: str) -> list[tuple[int, str]]:
    """(step, uri) of the run's checkpoints, oldest first."""
    fs, path = fsspec.core.url_to_fs(uri_lib.join(output, CHECKPOINTS))
    if not fs.isdir(path):
        return []
    found = []
    for p in fs.ls(path, detail=False):
        m = _NAME.search(p.rsplit("/", 1)[-1])
        if m and not p.rsplit("/", 1)[-1].startswith("."):
            found.append((int(m.group(1)), checkpoint_uri(output, int(m.group(1)))))
    return sorted(found)


def latest(output: str) -> tuple[int, str] | None:
    found = list_checkpoints(output)
    return found[-1] if found else None


class CheckpointError(UserError, ValueError):
    """The run folder holds checkpoints and none of them loads: the user decides what to do with them."""


def load_newest(output: str) -> dict | None:
    """The newest of the run's checkpoints that loads, or None when it has none. One cut short or
    emptied (a full disk, a VM reset before its data reached the disk) or without the format marker
    is skipped with a warning naming it, for the next older one; CheckpointError when none loads. A
    read that fails on I/O (OSError: a disk, the network) is raised, not skipped: the file may be fine."""
    found = list_checkpoints(output)
    skipped = []
    for _, uri in reversed(found):
        data = uri_lib.read_bytes(uri)
        try:
            ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            why = None if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT else \
                f"not a training checkpoint (no format '{FORMAT}')"
            bad = [] if why else guard.state_dict_non_finite(ckpt)
            if bad:
                why = (f"inf/NaN weights in {len(bad)} tensors ({bad[0]}, ...): a diverged run saved it before "
                       "radio skipped non-finite steps")
        except Exception as e:  # noqa: BLE001  (zip/pickle/EOF errors: what a damaged file raises)
            if failures.is_environment_error(e):   # out of memory while loading: the file may be fine
                raise
            first = (str(e).strip().splitlines() or [""])[0][:200]
            why = f"{len(data)} bytes that do not load ({type(e).__name__}{': ' + first if first else ''})"
        if why is None:
            if skipped:
                log.warning("resuming from %s, the newest checkpoint that loads (%d newer skipped)", uri, len(skipped))
            return ckpt
        log.warning("skipping checkpoint %s: %s", uri, why)
        skipped.append(f"{uri.rsplit('/', 1)[-1]}: {why}")
    if skipped:
        raise CheckpointError(f"none of the {len(skipped)} checkpoints in {uri_lib.join(output, CHECKPOINTS)} loads "
                              f"({'; '.join(skipped[:3])}{'; ...' if len(skipped) > 3 else ''}): move them away to "
                              "start a new run in this --output, or give another --output.")
    return None


def to_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load(uri: str) -> dict:
    """A checkpoint dict (CPU tensors), read with ``weights_only=True``."""
    return torch.load(io.BytesIO(uri_lib.read_bytes(uri)), map_location="cpu", weights_only=True)


def save(output: str, state: dict, *, keep: int = 3) -> str:
    """Write ``state`` as ``step-N.pt`` atomically, then delete all but the newest ``keep`` up to
    its step. A checkpoint of a later step is one that did not load when the run resumed
    (``load_newest``): it is neither counted nor deleted (the run overwrites it when it gets there),
    so it never pushes out the good ones. Temporaries earlier writes left go first (the main rank is
    the run's only writer); a full disk is a one-line JobFailed naming the folder and the size."""
    step = int(state["step"])
    uri = checkpoint_uri(output, step)
    remove_stale_temporaries(output)
    data = to_bytes({"format": FORMAT, **state})
    _write(output, uri, data, f"Checkpoints of this run take {_mib(len(data))} each ({keep or 'all'} kept)")
    if keep > 0:
        for _, old in [c for c in list_checkpoints(output) if c[0] <= step][:-keep]:
            fs, path = fsspec.core.url_to_fs(old)
            uri_lib.remove_file(fs, path)
    return uri


def export(output: str, name: str, obj: dict) -> str:
    """Write ``<output>/<name>`` atomically; returns its sha256 (what configs pin)."""
    data = to_bytes(obj)
    _write(output, uri_lib.join(output, name), data, f"{name} takes {_mib(len(data))}, rewritten at every checkpoint")
    return hashlib.sha256(data).hexdigest()


#: what a write of the run left when its process died: any temporary in checkpoints/, and those of
#: the files the run keeps in its folder (``write_bytes_atomic`` names them ``.tmp-<hex>-<name>``)
_RUN_TEMPORARY = re.compile(r"\.tmp-[0-9a-f]{32}-(radio\.pt|sync\.pt|config\.yaml)$")


def remove_stale_temporaries(output: str) -> list[str]:
    """Remove the temporaries killed writes of this run left (10s of MB each, forever, and after a
    full disk the reason it stays full). Call it on the main rank only: it is the run's one writer,
    and its own writes are done when it calls this, so every temporary there now is stale."""
    removed = []
    for folder, pattern in ((uri_lib.join(output, CHECKPOINTS), re.compile(r"\.tmp-")), (output, _RUN_TEMPORARY)):
        fs, path = fsspec.core.url_to_fs(folder)
        if not fs.isdir(path):
            continue
        for p in fs.ls(path, detail=False):
            if pattern.match(p.rstrip("/").rsplit("/", 1)[-1]) and fs.isfile(p):
                uri_lib.remove_file(fs, p)
                removed.append(p)
    if removed:
        log.info("removed %d temporaries that interrupted writes left in %s: %s", len(removed), output,
                 ", ".join(p.rsplit("/", 1)[-1] for p in removed))
    return removed


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _write(output: str, uri: str, data: bytes, needs: str) -> None:
    """``write_bytes_atomic``; a full disk (or quota) is the environment's failure, told in one line."""
    try:
        uri_lib.write_bytes_atomic(uri, data)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise JobFailed(f"no space left for {uri} ({_mib(len(data))}; {e.strerror}). {needs}: free space in "
                        f"{output}'s file system (or give another --output), then run the same command again to "
                        "resume from the newest checkpoint.") from e


# ---- RNG ------------------------------------------------------------------------------------------
def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- loading exports for other jobs -----------------------------------------------------------------
def model_config_of(ckpt: dict) -> ModelConfig:
    cfg = ckpt.get("model_config") or ckpt.get("config", {}).get("model")
    if cfg is None:
        raise ValueError("checkpoint has no model config ('model_config' or 'config.model').")
    return _from_dict(ModelConfig, cfg, where="checkpoint model_config")


def _load_verified(found, uri: str) -> dict:
    """The checkpoint whose sha256 ``resolve_weights`` checked, from the bytes that hash to it: read
    once, hashed, loaded from memory (opened again, the file could have been rewritten in between: a
    running training renames a new radio.pt over it at every checkpoint)."""
    from preprocess.weights import WeightsError

    data = uri_lib.read_bytes(found.path)
    if hashlib.sha256(data).hexdigest() != found.sha256:
        raise WeightsError(f"{uri} changed while it was read (a running training rewrites RUN/radio.pt, a "
                           "train-sync RUN/sync.pt, at every checkpoint): give and pin one of RUN/checkpoints/step-N.pt.")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def load_generator(uri: str, sha256: str | None = None, *, ema: bool = True, allow_unverified: bool = False):
    """RADIO in eval mode from ``radio.pt`` or a training checkpoint (its EMA weights unless ``ema=False``)."""
    from radio.model import RADIO

    found = resolve_weights(uri, sha256, name="RADIO checkpoint", allow_unverified=allow_unverified,
                            how_to_get="Train one with `radio train` (RUN/radio.pt) and pin its sha256; a running "
                                       "training rewrites RUN/radio.pt at every checkpoint: to dub while it trains, "
                                       "give and pin one of RUN/checkpoints/step-N.pt.")
    ckpt = _load_verified(found, uri)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{uri} is not a RADIO checkpoint (it holds a {type(ckpt).__name__}).")
    if ckpt.get("kind") == "sync":
        raise ValueError(f"{uri} is a sync-discriminator checkpoint (radio train-sync), not a RADIO generator: "
                         "give a `radio train` output's radio.pt or checkpoints/step-N.pt.")
    if "model" not in ckpt and "generator" not in (ckpt.get("models") or {}):
        raise ValueError(f"{uri} holds no RADIO generator weights (keys: {sorted(ckpt)[:8]}).")
    model = RADIO(model_config_of(ckpt))
    state = ckpt["model"] if "model" in ckpt else ckpt["models"]["ema" if ema else "generator"]
    bad = guard.state_dict_non_finite({"models": {"generator": state}})
    if bad:
        raise ValueError(f"{uri} holds inf/NaN weights ({len(bad)} tensors, {bad[0].split('.', 2)[2]}, ...): it was "
                         "saved by a diverged training run; give an earlier checkpoint (RUN/checkpoints/step-N.pt).")
    unused = unused_noise_scales(state, model.cfg)
    if unused:
        log.info("%s: ignoring %d noise scales that model.noise: false never uses", uri, len(unused))
        state = {k: v for k, v in state.items() if k not in unused}
    model.load_state_dict(state)
    return model.eval()


# ---- checkpoints of `model.noise: false` from before G stopped building its unused noise scales ------
def unused_noise_scales(state: dict, cfg: ModelConfig) -> set[str]:
    """The noise scales in G's ``state`` that a ``model.noise: false`` G no longer has (they never
    received a gradient, so they are still 0: dropping them changes nothing G computes)."""
    if cfg.noise:
        return set()
    return {k for k in state if k.endswith(".noise.weight")}


def upgrade_noise_free(ckpt: dict, cfg: ModelConfig, uri: str = "checkpoint") -> dict:
    """A training checkpoint of a ``model.noise: false`` run written when G still built its noise
    scales, made loadable by today's G: the scales leave G's and the EMA's weights, and G's Adam state
    (indexed by parameter position) is renumbered by parameter name. Other checkpoints are returned as
    they are."""
    models = ckpt.get("models") or {}
    unused = unused_noise_scales(models.get("generator") or {}, cfg)
    if not unused:
        return ckpt
    from radio.model import RADIO

    with torch.device("meta"):               # parameter names and order only, no memory
        old_names = [n for n, _ in RADIO(dataclasses.replace(cfg, noise=True)).named_parameters()]
        new_names = [n for n, _ in RADIO(cfg).named_parameters()]
    if not unused <= set(old_names) or [n for n in old_names if n not in unused] != new_names:
        raise ValueError(f"{uri}: its generator has noise scales that model.noise: false does not explain; "
                         "cannot resume it")
    new_index = {old: new_names.index(name) for old, name in enumerate(old_names) if name not in unused}
    optim_g = ckpt["optim"]["g"]
    optim_g = {**optim_g,
               "state": {new_index[i]: v for i, v in optim_g["state"].items() if i in new_index},
               "param_groups": [{**g, "params": [new_index[i] for i in g["params"] if i in new_index]}
                                for g in optim_g["param_groups"]]}
    log.info("%s: dropping %d noise scales that model.noise: false never uses (G, EMA and G's Adam state)",
             uri, len(unused))
    drop = {name: {k: v for k, v in state.items() if k not in unused} for name, state in models.items()
            if name in ("generator", "ema")}
    return {**ckpt, "models": {**models, **drop}, "optim": {**ckpt["optim"], "g": optim_g}}


def load_sync(uri: str | None, sha256: str | None):
    """The pretrained sync discriminator S (frozen, eval mode) from ``sync.pt`` or a train-sync checkpoint."""
    from radio.losses import freeze
    from radio.model import SyncNet

    found = resolve_weights(uri, sha256, name="sync discriminator S (loss.sync_uri)", how_to_get=SYNC_HOW_TO_GET)
    ckpt = _load_verified(found, uri)
    state = None
    if isinstance(ckpt, dict):
        state = ckpt.get("sync") if "sync" in ckpt else (ckpt.get("models") or {}).get("sync")
    if state is None:   # a radio.pt or a RADIO training checkpoint given by mistake: one line, not a KeyError
        from preprocess.weights import WeightsError

        kind = "a RADIO generator (radio.pt)" if isinstance(ckpt, dict) and ("model" in ckpt or "models" in ckpt) \
            else "no sync discriminator"
        raise WeightsError(f"loss.sync_uri {uri!r} holds {kind}, not S: give a `radio train-sync` output's "
                           f"sync.pt or checkpoints/step-N.pt. {SYNC_HOW_TO_GET}")
    net = SyncNet(model_config_of(ckpt))
    net.load_state_dict(state)
    return freeze(net)
