"""LPIPS v0.1 with the AlexNet trunk, reimplemented (SPEC "Evaluation", "Weights").

The ``lpips`` PyPI package cannot be imported in our environment (it imports torchvision, whose
PyPI build does not load beside our CPU torch), so the network is rebuilt here, numerically the
same as ``lpips.LPIPS(net='alex', version='0.1')`` (checked in tests/test_metrics.py against the
package itself):

1. inputs in [-1, 1]; ScalingLayer ``(x - shift) / scale`` with shift (-.030, -.088, -.188) and
   scale (.458, .448, .450);
2. torchvision AlexNet ``features[0:12]`` (conv1 … relu5), taps after relu1..relu5 (indices 1, 4,
   7, 9, 11); parameter names ``features.N.weight``/``.bias`` as in torchvision's state dict;
3. each tap unit-normalised over channels (eps 1e-10), squared difference, a 1×1 conv without
   bias (``lin0``…``lin4``), spatial mean, summed over the five taps.

Weights (nothing downloads; both files are checked against a sha256):

* linear layers: ``lpips/weights/v0.1/alex.pth`` as shipped in the lpips 0.1.4 wheel
  (sha256 :data:`LPIPS_ALEX_V01_SHA256`); default URI = that file inside an installed ``lpips``
  distribution, found through package metadata without importing it;
* backbone: torchvision's ImageNet AlexNet, ``alexnet-owt-7be5be79.pth``
  (sha256 :data:`ALEXNET_SHA256`); no default location — configure its URI.

A model is only usable once weights were loaded (:func:`load_lpips` or
:meth:`LPIPSAlex.from_state_dicts`); scoring with a freshly constructed, randomly initialised
network raises.
"""
from __future__ import annotations

import importlib.metadata
import os

import numpy as np
import torch
from torch import nn

from preprocess.weights import WeightsError, resolve_weights

from ._checks import as_frames, mean_of, same_shape

LPIPS_ALEX_V01_SHA256 = "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"
ALEXNET_SHA256 = "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02"
ALEXNET_HOW_TO_GET = (
    "Copy torchvision's ImageNet AlexNet weights 'alexnet-owt-7be5be79.pth' (244,408,911 bytes, "
    "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth, fetched on a machine with "
    "internet access) to storage the workers can read, and set the LPIPS backbone URI to it."
)
LINEAR_HOW_TO_GET = (
    "Install the lpips wheel without its dependencies (pip install --no-deps lpips==0.1.4; it "
    "ships lpips/weights/v0.1/alex.pth) or copy that file to storage the workers can read and "
    "set the LPIPS linear-weights URI to it."
)

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
CHANNELS = (64, 192, 384, 256, 256)
TAPS = (1, 4, 7, 9, 11)  # features indices whose outputs are relu1..relu5

METADATA = {
    "name": "lpips",
    "higher_is_better": False,
    "is_differentiable": True,
    "unit": "",
    "variant": "LPIPS v0.1, AlexNet trunk, linear calibration (lpips 0.1.4 weights)",
    "input": "uint8 RGB mapped to [-1, 1]",
    "clip_reduction": "mean of per-frame LPIPS",
}


def default_linear_uri() -> str | None:
    """``lpips/weights/v0.1/alex.pth`` inside an installed lpips distribution, else None.

    Uses package metadata only: importing lpips would import torchvision.
    """
    try:
        path = importlib.metadata.distribution("lpips").locate_file("lpips/weights/v0.1/alex.pth")
    except importlib.metadata.PackageNotFoundError:
        return None
    return str(path) if os.path.exists(str(path)) else None


def alexnet_features() -> nn.Sequential:
    """torchvision's ``alexnet().features`` up to relu5 (indices 0–11; the last max-pool, 12, is
    not used by LPIPS). Randomly initialised; load weights before use."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
    )


def _normalize(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit length over channels: (N, C, H, W) -> (N, C, H, W)."""
    return feat / (torch.sqrt((feat ** 2).sum(dim=1, keepdim=True)) + eps)


class LPIPSAlex(nn.Module):
    """LPIPS v0.1 / AlexNet. forward(x0, x1): two (N, 3, H, W) tensors in [-1, 1] -> (N,)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.features = alexnet_features()
        for k, c in enumerate(CHANNELS):
            self.add_module(f"lin{k}", nn.Conv2d(c, 1, kernel_size=1, bias=False))
        self.weights_info: dict | None = None  # set when real (or declared test) weights are loaded
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_state_dicts(cls, backbone: dict, linear: dict, weights_info: dict) -> "LPIPSAlex":
        """Build from a torchvision AlexNet state dict (``features.N.*`` keys; ``classifier.*``
        ignored) and the lpips linear state dict (``linK.model.1.weight`` or ``linK.weight``).
        ``weights_info`` (hashes or a 'random (test)' label) is recorded in every score."""
        model = cls()
        feats = {k[len("features."):]: v for k, v in backbone.items() if k.startswith("features.")}
        feats = {k: v for k, v in feats.items() if int(k.split(".")[0]) < len(model.features)}
        own = model.features.state_dict()
        bad = sorted(set(own) ^ set(feats)) + [k for k in own if k in feats and feats[k].shape != own[k].shape]
        if bad:
            raise WeightsError(f"LPIPS backbone: expected torchvision AlexNet keys and shapes "
                               f"features.N.weight/bias. Got mismatches at {bad}.")
        model.features.load_state_dict(feats)
        lin = {}
        for k, v in linear.items():
            parts = k.split(".")
            if parts[0].startswith("lin") and parts[-1] == "weight":
                lin[f"{parts[0]}.weight"] = v
        expected = {f"lin{k}.weight": (1, c, 1, 1) for k, c in enumerate(CHANNELS)}
        if {k: tuple(v.shape) for k, v in lin.items()} != expected:
            raise WeightsError(f"LPIPS linear weights: expected keys lin0..lin4 of shapes (1, C, 1, 1) "
                               f"(lpips v0.1 alex.pth). Got {sorted(linear)}.")
        model.load_state_dict(lin, strict=False)
        model.weights_info = dict(weights_info)
        return model

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        n = x0.shape[0]
        h0 = (x0 - self.shift) / self.scale
        h1 = (x1 - self.shift) / self.scale
        total = x0.new_zeros(n)
        k = 0
        for i, layer in enumerate(self.features):
            h0, h1 = layer(h0), layer(h1)
            if i in TAPS:
                d = (_normalize(h0) - _normalize(h1)) ** 2
                total = total + getattr(self, f"lin{k}")(d).mean(dim=(1, 2, 3))
                k += 1
        return total


def load_lpips(backbone_uri: str | None, backbone_sha256: str | None = ALEXNET_SHA256,
               linear_uri: str | None = None, linear_sha256: str | None = LPIPS_ALEX_V01_SHA256,
               device: str | torch.device = "cpu") -> LPIPSAlex:
    """LPIPS v0.1 AlexNet from configured weight files (verified sha256, ``weights_only``).

    ``linear_uri`` None means :func:`default_linear_uri`. Raises
    :class:`preprocess.weights.WeightsError` naming the missing file and how to get it.
    """
    bb = resolve_weights(backbone_uri, backbone_sha256, name="LPIPS AlexNet backbone",
                         how_to_get=ALEXNET_HOW_TO_GET)
    li = resolve_weights(linear_uri or default_linear_uri(), linear_sha256,
                         name="LPIPS v0.1 alex linear weights", how_to_get=LINEAR_HOW_TO_GET)
    backbone = torch.load(bb.path, map_location="cpu", weights_only=True)
    linear = torch.load(li.path, map_location="cpu", weights_only=True)  # saved from CUDA tensors
    info = {"lpips_backbone_sha256": bb.sha256, "lpips_linear_sha256": li.sha256,
            "official_weights": bb.sha256 == ALEXNET_SHA256 and li.sha256 == LPIPS_ALEX_V01_SHA256}
    return LPIPSAlex.from_state_dicts(backbone, linear, info).to(device)


def _to_input(frames: np.ndarray, device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1] (lpips' ``im2tensor``)."""
    t = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))).to(device, torch.float32)
    return t / 127.5 - 1.0


def lpips_per_frame(model: LPIPSAlex, pred, target, batch_size: int = 16) -> np.ndarray:
    """LPIPS of every frame. uint8 (N, H, W, 3) pair -> float64 (N,)."""
    if model.weights_info is None:
        raise WeightsError("LPIPS model has no loaded weights; build it with load_lpips() "
                           "(a randomly initialised network never scores).")
    p = as_frames(pred, "pred")
    t = as_frames(target, "target")
    same_shape(p, t)
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(p), batch_size):
            out.append(model(_to_input(p[i:i + batch_size], device),
                             _to_input(t[i:i + batch_size], device)).double().cpu().numpy())
    return np.concatenate(out)


def _lpips_update(model: LPIPSAlex, pred, target) -> tuple[float, int]:
    """(sum of per-frame LPIPS, number of frames)."""
    v = lpips_per_frame(model, pred, target)
    return float(v.sum()), len(v)


def _lpips_compute(total: float, n: int) -> float:
    return mean_of(total, n)


def lpips(model: LPIPSAlex, pred, target) -> float:
    """Clip LPIPS: mean over frames. uint8 (H, W, 3) or (N, H, W, 3) pairs."""
    return _lpips_compute(*_lpips_update(model, pred, target))
