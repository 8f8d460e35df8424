"""Parameter counts per module (``radio model-summary``)."""
from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .discriminator import Discriminator
from .radio import RADIO
from .sync import SyncNet


def _count(module: nn.Module | None, *, skip: str | None = None) -> int:
    if module is None:
        return 0
    return sum(p.numel() for n, p in module.named_parameters() if skip is None or not n.startswith(skip))


def parameter_counts(cfg: ModelConfig | None = None) -> dict[str, int]:
    """{'E_c', 'E_s', 'E_a', 'G', 'ViT', 'D', 'S_v', 'S_a'} -> parameter count (built on the meta device)."""
    cfg = cfg or ModelConfig()
    with torch.device("meta"):
        model, disc, sync = RADIO(cfg), Discriminator(cfg), SyncNet(cfg)
    return {
        "E_c": _count(model.content_encoder),
        "E_s": _count(model.style_encoder),
        "E_a": _count(model.audio_encoder),
        "G": _count(model.generator, skip="vit."),
        "ViT": _count(model.generator.vit),
        "D": _count(disc),
        "S_v": _count(sync.visual),
        "S_a": _count(sync.audio),
    }


def model_summary(cfg: ModelConfig | None = None) -> str:
    """A text table of parameter counts per module, with the generator total (what trains with G)."""
    cfg = cfg or ModelConfig()
    counts = parameter_counts(cfg)
    fidelity = {"A": "none", "B": "none", "C": "additive f_s^i", "D": f"ViT({cfg.vit.n}, {cfg.vit.m})"}
    where = f" at decoder layers {list(cfg.fidelity_layers)}" if cfg.fidelity_layers else ""
    lines = [f"RADIO model  resolution {cfg.resolution}  ablation {cfg.ablation}  "
             f"fidelity {fidelity[cfg.ablation]}{where}  w_dim {cfg.w_dim}",
             f"{'module':<8}{'parameters':>14}"]
    lines += [f"{name:<8}{n:>14,}" for name, n in counts.items()]
    gen = sum(counts[k] for k in ("E_c", "E_s", "E_a", "G", "ViT"))
    lines += [f"{'RADIO':<8}{gen:>14,}   (E_c + E_s + E_a + G + ViT: trained as the generator)",
              f"{'all':<8}{sum(counts.values()):>14,}"]
    return "\n".join(lines)


def load_model_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ModelConfig:
    """ModelConfig from a YAML file (its ``model:`` section when it has one, e.g. a training config,
    else the whole mapping) plus ``key=value`` / ``model.key=value`` overrides (YAML-parsed)."""
    from preprocess.config import from_dict, parse_override, read_yaml

    data: dict = read_yaml(path) if path else {}
    if isinstance(data.get("model"), dict):
        data = data["model"]
    data = dict(data)
    for item in overrides:
        key, value = parse_override(item)
        keys = key.removeprefix("model.").split(".")
        cur = data
        for k in keys[:-1]:
            cur = cur.setdefault(k, {})
        cur[keys[-1]] = value
    return from_dict(ModelConfig, data, where=path or "model")


def main(args) -> int:
    """``radio model-summary [--config YAML] [--set key=value] [--resolution N]``."""
    overrides = list(getattr(args, "overrides", None) or [])
    if getattr(args, "resolution", None):
        overrides.append(f"resolution={args.resolution}")
    print(model_summary(load_model_config(getattr(args, "config", None), overrides)))
    return 0
