"""Build what ``train()`` receives: device, models, frozen loss networks, optimisers, resume state."""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from preprocess.config import ConfigError, flatten, plain
from radio.losses import freeze, load_vgg19
from radio.model import RADIO, Discriminator, SyncNet
from radio.model.discriminator import mbstd_group

from . import checkpoint, dist, guard
from .config import TrainConfig, micro_batch
from .cursors import resume_point

log = logging.getLogger("radio.train")


@dataclass
class Models:
    """The generator (plain module), its training view (DDP-wrapped under torchrun), its EMA copy,
    D, and the frozen networks the losses run through (``None`` when their weight is 0)."""
    generator: RADIO
    g_train: nn.Module
    ema: RADIO
    disc: Discriminator
    vgg: nn.Module | None = None
    sync: SyncNet | None = None
    d_fast: nn.Module | None = None          # D for the non-R1 passes (compiled under speed.compile)
    memory_format: torch.memory_format = torch.contiguous_format   # of every frame batch (speed)

    @property
    def d(self) -> nn.Module:
        """D as its loss and G's adversarial term call it; R1 calls ``disc`` (eager)."""
        return self.d_fast if self.d_fast is not None else self.disc


@dataclass
class Optimizers:
    g: torch.optim.Optimizer
    d: torch.optim.Optimizer


@dataclass
class Resume:
    """Where a run continues from: step, data cursors {consumer: (epoch, chunk, offset)} and the
    consumer slot whose batch comes next (``cursors.py``)."""
    step: int = 0
    cursors: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    next_slot: int = 0
    listing: str | None = None      # the data listing the cursors point into (ShardStream.listing)


def select_device(name: str, info: dist.DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("run.device=cuda but no CUDA device is visible.")
        return torch.device("cuda", info.local_rank)
    return torch.device(name)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 under ``run.amp: auto`` on CUDA (or ``bf16`` anywhere); None means fp32."""
    if cfg.run.amp == "bf16" or (cfg.run.amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def loss_networks(cfg: TrainConfig, device: torch.device) -> tuple[nn.Module | None, SyncNet | None]:
    """VGG19 and S, loaded from their configured files; clear errors when a needed one is missing."""
    vgg = sync = None
    if cfg.loss.perceptual > 0:
        vgg = load_vgg19(cfg.loss.vgg_uri, cfg.loss.vgg_sha256).to(device)
    else:
        log.info("perceptual loss off (loss.perceptual=0): no VGG19 needed")
    if cfg.loss.sync > 0:
        sync = checkpoint.load_sync(cfg.loss.sync_uri, cfg.loss.sync_sha256).to(device)
        log.info("sync loss on: λ_s=%g, S from %s (frozen, eval mode)", cfg.loss.sync, cfg.loss.sync_uri)
    else:
        log.info("sync loss off (loss.sync=0): training without the sync discriminator S")
    return vgg, sync


def d_batch(cfg: TrainConfig, info: dist.DistInfo) -> int:
    """Frames in each of D's calls on a rank (one micro-batch of T-frame windows), with a note when
    model.mbstd_group does not divide it (the minibatch-stddev group is then smaller)."""
    frames = micro_batch(cfg.run.batch, info.world, cfg.run.accumulate) * cfg.data.frames
    group = mbstd_group(cfg.model.mbstd_group, frames)
    if group != cfg.model.mbstd_group and info.main:
        log.info("D's minibatch-stddev group is %d, not model.mbstd_group=%d: each rank's D sees %d frames per "
                 "call (%d windows x %d frames), which %d does not divide", group, cfg.model.mbstd_group, frames,
                 frames // cfg.data.frames, cfg.data.frames, cfg.model.mbstd_group)
    return frames


def build_radio(cfg: TrainConfig, device: torch.device, info: dist.DistInfo) -> tuple[Models, Optimizers]:
    """G, EMA, D and their Adam optimisers; G is DDP-wrapped when WORLD_SIZE > 1."""
    vgg, sync = loss_networks(cfg, device)
    generator = RADIO(cfg.model).to(device)
    disc = Discriminator(cfg.model, batch=d_batch(cfg, info)).to(device)
    dist.broadcast_module(generator)          # rank 0's initial weights everywhere (seeds differ per
    dist.broadcast_module(disc)               # rank), before the EMA copy is taken
    ema = freeze(copy.deepcopy(generator))
    g_train: nn.Module = generator
    if dist.active():
        g_train = nn.parallel.DistributedDataParallel(
            generator, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=cfg.speed.broadcast_buffers)
    o = cfg.optim
    opt_g = guard.adam(generator.parameters(), lr=o.lr, betas=o.betas, device=device)
    opt_d = guard.adam(disc.parameters(), lr=o.d_lr or o.lr, betas=o.betas, device=device)
    from . import speed

    models = speed.apply(Models(generator, g_train, ema, disc, vgg, sync), cfg.speed)
    return models, Optimizers(opt_g, opt_d)


def build_sync(cfg: TrainConfig, device: torch.device) -> tuple[SyncNet, nn.Module, torch.optim.Optimizer]:
    """S for pretraining, its training view (DDP under torchrun) and Adam."""
    net = SyncNet(cfg.model).to(device)
    train_view: nn.Module = net
    if dist.active():
        train_view = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    p = cfg.sync_pretrain
    return net, train_view, guard.adam(net.parameters(), lr=p.lr, betas=p.betas, device=device)


def restore(ckpt: dict, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
            consumers: int, workers: int = 1) -> Resume:
    """Load a training checkpoint into built modules/optimisers; the data cursors to continue from.
    (RNG states are restored separately, ``restore_rng``, once nothing else will draw from them.)"""
    for name, module in modules.items():
        module.load_state_dict(ckpt["models"][name])
    for name, opt in optimizers.items():
        load_optimizer(opt, ckpt["optim"][name], name)
    cursors, next_slot = resume_point(ckpt.get("data") or {}, consumers, workers)
    return Resume(step=int(ckpt["step"]), cursors=cursors, next_slot=next_slot)


#: optimiser settings the config owns: a resumed run uses the config's (optim.lr/d_lr/betas,
#: sync_pretrain.lr/betas), not the ones saved with Adam's state
CONFIG_HYPERPARAMETERS = ("lr", "betas")
#: how the built optimiser runs (fused Adam: ``guard``), whatever the checkpoint's Adam used
IMPLEMENTATION = ("fused", "foreach")


def load_optimizer(opt: torch.optim.Optimizer, state: dict, name: str) -> None:
    """Adam's state from a checkpoint, with the learning rate and betas of the config it was built
    with (``load_state_dict`` alone brings back the saved ones, silently ignoring a changed config);
    each change is logged old -> new. (No LR schedule exists: a scheduler would need its base
    learning rates set here too.)"""
    wanted = [{k: g[k] for k in CONFIG_HYPERPARAMETERS if k in g} for g in opt.param_groups]
    built = [{k: g[k] for k in IMPLEMENTATION if k in g} for g in opt.param_groups]
    opt.load_state_dict(state)
    for group, impl in zip(opt.param_groups, built):
        group.update(impl)
    for i, (group, want) in enumerate(zip(opt.param_groups, wanted)):
        changed = [f"{k} {_hyper(group[k])} -> {_hyper(v)}" for k, v in want.items() if _hyper(group[k]) != _hyper(v)]
        group.update(want)
        if changed:
            where = name if len(wanted) == 1 else f"{name} group {i}"
            log.info("optimiser %s: %s (the config's values replace the checkpoint's)", where, ", ".join(changed))


def _hyper(v) -> str:
    return "(" + ", ".join(f"{float(x):g}" for x in v) + ")" if isinstance(v, (tuple, list)) else f"{float(v):g}"


def restore_rng(ckpt: dict, info: dist.DistInfo) -> None:
    """This rank's torch (and CUDA) RNG state from the checkpoint. Call it after creating the data
    iterator (DataLoader draws its base seed from the global RNG), so that a resumed run draws the
    same noise as an uninterrupted one."""
    rng = ckpt.get("rng") or []
    if len(rng) == info.world:
        checkpoint.set_rng_state(rng[info.rank])
    else:
        log.warning("checkpoint has RNG states of %d ranks, this run has %d: reseeding", len(rng), info.world)
        torch.manual_seed(int(ckpt["config"]["run"]["seed"]) + 1000 * info.rank + int(ckpt["step"]))


def check_model_config(saved: dict, cfg: TrainConfig) -> None:
    """Refuse to resume into a different model; note other config changes."""
    from .config import to_dict

    now = to_dict(cfg)
    if plain(saved.get("model")) != plain(now["model"]):
        old, new = flatten(plain(saved.get("model") or {}), "model."), flatten(plain(now["model"]), "model.")
        diff = [f"{k} ({old.get(k, 'unset')} -> {new.get(k, 'unset')})" for k in sorted(old.keys() | new.keys())
                if old.get(k) != new.get(k)]
        more = f" and {len(diff) - 5} more" if len(diff) > 5 else ""
        raise ConfigError(f"The checkpoint's model config differs from this run's: {', '.join(diff[:5])}{more}. Resume "
                          "with the same model settings, or pass a new --output to start a new run.")
    changed = sorted(f"{sec}.{k}" for sec in now if isinstance(now[sec], dict)
                     for k in now[sec] if plain(saved.get(sec, {}).get(k)) != plain(now[sec][k]))
    if changed:
        log.info("config changed since the checkpoint (the new values apply): %s", ", ".join(changed))
