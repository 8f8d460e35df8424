"""SyncNet (Chung & Zisserman 2016) as released in joonson/syncnet_python (``syncnet_v2.model``).

Architecture (the released ``S`` model; parameter names match its state dict so the official
file loads unchanged):

* ``netcnnaud`` + ``netfcaud``: MFCC (N, 1, 13, 20) — 13 coefficients × 20 MFCC frames (0.2 s)
  — through 2-D conv/BN/ReLU blocks to 512 × 1 × 1, then FC 512 → 512 → 1024;
* ``netcnnlip`` + ``netfclip``: video (N, 3, 5, 224, 224) — 5 consecutive 224×224 frames,
  **BGR** channel order, raw 0–255 values (the official code reads JPEGs with OpenCV and does not
  normalise) — through 3-D conv/BN/ReLU blocks (the first with a temporal extent of 5) to
  512 × 1 × 1 × 1, then FC 512 → 512 → 1024.

Weights are loaded only from a configured file with a verified sha256 (``weights_only=True``);
the official file's digest is :data:`SYNCNET_V2_SHA256` (as published by independent
manifests of ``syncnet_v2.model``, 54,573,114 bytes). Every score records the loaded file's
digest and ``official_weights`` = (digest == that value), so numbers from any other file
(a fine-tune, or the seeded random weights of the tests) are never mistaken for Sync-C/D.
"""
from __future__ import annotations

import pickle

import torch
from torch import nn

from preprocess.weights import WeightsError, resolve_weights

SYNCNET_V2_SHA256 = "961e8696f888fce4f3f3a6c3d5b3267cf5b343100b238e79b2659bff2c605442"
HOW_TO_GET = (
    "Download syncnet_v2.model from the syncnet_python release (its download_model.sh: "
    "www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model) on a machine with internet "
    "access, copy it to storage the workers can read, and set the SyncNet weights URI and sha256."
)


def _block2d(cin, cout, k, pool=None, padding=(1, 1)):
    layers = [nn.Conv2d(cin, cout, kernel_size=k, stride=(1, 1), padding=padding),
              nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return layers + ([pool] if pool is not None else [])


def _block3d(cin, cout, k, stride=(1, 1, 1), padding=(0, 1, 1), pool=None):
    layers = [nn.Conv3d(cin, cout, kernel_size=k, stride=stride, padding=padding),
              nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]
    return layers + ([pool] if pool is not None else [])


def _fc(dim_out):
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, dim_out))


class SyncNet(nn.Module):
    """The ``S`` model. ``forward_aud``: (N, 1, 13, 20) -> (N, 1024);
    ``forward_lip``: (N, 3, 5, 224, 224) BGR 0–255 -> (N, 1024)."""

    def __init__(self, embed_dim: int = 1024):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_block2d(1, 64, (3, 3), pool=nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1))),
            *_block2d(64, 192, (3, 3), pool=nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2))),
            *_block2d(192, 384, (3, 3)),
            *_block2d(384, 256, (3, 3)),
            *_block2d(256, 256, (3, 3), pool=nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2))),
            *_block2d(256, 512, (5, 4), padding=(0, 0)),
        )
        self.netfcaud = _fc(embed_dim)
        self.netfclip = _fc(embed_dim)
        self.netcnnlip = nn.Sequential(
            *_block3d(3, 96, (5, 7, 7), stride=(1, 2, 2), padding=(0, 0, 0),
                      pool=nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2))),
            *_block3d(96, 256, (1, 5, 5), stride=(1, 2, 2),
                      pool=nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))),
            *_block3d(256, 256, (1, 3, 3)),
            *_block3d(256, 256, (1, 3, 3)),
            *_block3d(256, 256, (1, 3, 3), pool=nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2))),
            *_block3d(256, 512, (1, 6, 6), padding=(0, 0, 0)),
        )
        self.weights_info: dict | None = None
        self.requires_grad_(False)
        self.eval()

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.netcnnaud(x)  # (N, 512, 1, 1)
        return self.netfcaud(mid.flatten(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.netcnnlip(x)  # (N, 512, 1, 1, 1)
        return self.netfclip(mid.flatten(1))


def _strip(state: dict) -> dict:
    """Accept the bare ``S`` keys (``netcnnaud.0.weight``) or a ``SyncNetInstance`` dump
    (``__S__.netcnnaud.0.weight``)."""
    out = {}
    for k, v in state.items():
        for prefix in ("__S__.", "module."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def syncnet_from_state_dict(state: dict, weights_info: dict) -> SyncNet:
    """Build a SyncNet from a state dict; ``weights_info`` is copied into every score."""
    model = SyncNet()
    state = _strip(state)
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]  # absent in old files
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)}≠{tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise WeightsError(f"SyncNet weights: expected syncnet_v2.model keys and shapes (netcnnaud.*, "
                           f"netfcaud.*, netcnnlip.*, netfclip.*). Got missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}.")
    model.load_state_dict(state, strict=False)
    model.weights_info = dict(weights_info)
    return model


def load_syncnet(uri: str | None, sha256: str | None = SYNCNET_V2_SHA256, *, label: str | None = None,
                 device: str | torch.device = "cpu") -> SyncNet:
    """SyncNet from a configured weight file, verified against ``sha256``.

    ``label`` names the weights in reports (default ``'syncnet_v2 (official)'`` for the official
    digest, ``'unofficial'`` otherwise). Raises :class:`preprocess.weights.WeightsError`.
    """
    w = resolve_weights(uri, sha256, name="SyncNet (syncnet_v2.model)", how_to_get=HOW_TO_GET)
    try:
        state = torch.load(w.path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(f"SyncNet weights {uri!r} are not a plain state dict loadable with "
                           f"weights_only=True; re-save the state dict of the official model. ({e})") from e
    if not isinstance(state, dict):
        raise WeightsError(f"SyncNet weights {uri!r}: expected a state dict. Got {type(state).__name__}.")
    official = w.sha256 == SYNCNET_V2_SHA256
    info = {"syncnet_sha256": w.sha256, "official_weights": official,
            "weights": label or ("syncnet_v2 (official)" if official else "unofficial")}
    return syncnet_from_state_dict(state, info).to(device)
