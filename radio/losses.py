"""RADIO's training losses (paper §3.3, SPEC "Model"), as top-level functions.

    L_G = l1·|I_t - I_out|_1 + perceptual·Σ_i λ_i |VGG_i(I_t) - VGG_i(I_out)|_1
          + λ_adv·softplus(-D(I_out)) + λ_s·BCE(S(I_out, A), 1)
    L_D = softplus(D(I_out)) + softplus(-D(I_t))            (eq. 3)  [+ lazy R1 every 16 steps]

Images are (N, 3, H, W) in [-1, 1]. The VGG19 here is torchvision's ``vgg19().features`` up to
relu5_1 with the same module indices, so torchvision's state_dict (``features.0.weight`` ...) loads
into it directly; it is read from a configured file checked against its sha256, never downloaded.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from preprocess.weights import resolve_weights

# torchvision vgg19 "features": conv widths, 'M' = max-pool. Index i of the Sequential below is
# index i of torchvision's features (conv, ReLU, ..., pool), so state_dict keys match.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
RELU_LAYERS = (1, 6, 11, 20, 29)        # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG_HOW_TO_GET = (
    "Download torchvision's VGG19 (IMAGENET1K_V1) state_dict from "
    "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth on a machine with internet access, copy it "
    "where the job can read it (e.g. gs://BUCKET/weights/vgg19-dcbb9e9d.pth), and set loss.vgg_uri and "
    "loss.vgg_sha256 (sha256sum of the file; it starts with dcbb9e9d). To train without the perceptual "
    "term set loss.perceptual=0.")


class VGG19Features(nn.Module):
    """VGG19 conv stack to relu5_1; ``forward`` returns [relu1_1, relu2_1, relu3_1, relu4_1, relu5_1].

    Input: (N, 3, H, W) in [-1, 1]; mapped to [0, 1] and ImageNet-normalised inside.
    """

    def __init__(self):
        super().__init__()
        layers, c = [], 3
        for v in VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
                c = v
        self.features = nn.Sequential(*layers[:RELU_LAYERS[-1] + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in RELU_LAYERS:
                out.append(x)
        return out


def load_vgg19(uri: str | None, sha256: str | None) -> VGG19Features:
    """VGG19Features with torchvision weights from ``uri`` (sha256-checked), frozen and in eval mode.

    Raises ``preprocess.weights.WeightsError`` naming the file and how to get it.
    """
    found = resolve_weights(uri, sha256, name="VGG19 (perceptual loss)", how_to_get=VGG_HOW_TO_GET)
    state = torch.load(found.path, map_location="cpu", weights_only=True)
    vgg = VGG19Features()
    wanted = vgg.state_dict()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ValueError(f"{uri}: not a torchvision VGG19 state_dict (missing {missing[:4]}...). "
                         f"{VGG_HOW_TO_GET}")
    vgg.load_state_dict({k: state[k] for k in wanted})
    return freeze(vgg)


def freeze(module: nn.Module) -> nn.Module:
    """eval() + requires_grad_(False): a fixed network that gradients flow *through*."""
    module.eval()
    module.requires_grad_(False)
    return module


# ---- generator losses ---------------------------------------------------------------------------
def l1_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    return (fake.float() - real.float()).abs().mean()


def perceptual_loss(vgg: nn.Module, fake: torch.Tensor, real: torch.Tensor,
                    weights=(1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)) -> torch.Tensor:
    """Σ_i λ_i · mean |VGG_i(fake) - VGG_i(real)| over relu1_1..relu5_1 (real's features: no grad)."""
    with torch.no_grad():
        real_feats = vgg(real)
    return sum(w * l1_loss(f, r) for w, f, r in zip(weights, vgg(fake), real_feats))


def g_nonsaturating_loss(fake_pred: torch.Tensor) -> torch.Tensor:
    """G's adversarial term: mean softplus(-D(fake))."""
    return F.softplus(-fake_pred.float()).mean()


def sync_loss(sync_net: nn.Module, fake: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
    """BCE(S(fake, A), 1) through a frozen S (eq. 4-5): fake (B, 5, 3, R, R), mel (B, 20, 80) = the
    window of the centre frame, which covers all 5 frames."""
    from radio.model.sync import sync_bce

    p = sync_net(sync_net.prepare(fake), mel)
    return sync_bce(p, torch.ones_like(p))


# ---- discriminator losses -----------------------------------------------------------------------
def d_logistic_loss(real_pred: torch.Tensor, fake_pred: torch.Tensor) -> torch.Tensor:
    """Eq. 3: mean softplus(D(fake)) + mean softplus(-D(real))."""
    return F.softplus(fake_pred.float()).mean() + F.softplus(-real_pred.float()).mean()


def d_r1_loss(real_pred: torch.Tensor, real_img: torch.Tensor) -> torch.Tensor:
    """R1: mean over samples of |∇_x D(x)|^2 at real images (``real_img.requires_grad`` must be set)."""
    (grad,) = torch.autograd.grad(real_pred.float().sum(), real_img, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()
