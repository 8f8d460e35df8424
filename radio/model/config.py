"""Model configuration: plain dataclasses, buildable from a dict (``preprocess.config.from_dict``).

Numbers follow SPEC.md "Model" (paper §3, §4.1, appendix A, D). Two resolutions are meant:
192 (the paper's model) and 96 (the Table 2/3 ablation setting and CPU work). At 96 the same
six encoder layers run at 96, 48, 24, 12, 6, 6 (f_c is 6x6x512), the decoder outputs
6, 12, 24, 48, 96, 96, and the ViT patch is H_i/16 instead of H_i/32 (so patches stay 3 and 6
pixels and each lower half has 8x16 = 128 tokens instead of 16x32 = 512).

Images everywhere in ``radio.model`` are float RGB in [-1, 1], (B, 3, H, W).
"""
from __future__ import annotations

from dataclasses import dataclass, field

ABLATIONS = ("A", "B", "C", "D")


@dataclass
class ViTConfig:
    """ViT(n, m) of Table 3: n blocks (in the last n decoder layers unless ``layers`` names them),
    m attention layers per block, all sharing the block's key/value tokens."""

    n: int = 2                     # ViT blocks
    m: int = 2                     # attention layers per block
    layers: tuple[int, ...] = ()   # 1-based decoder layers; () -> the last n (5, 6 for n=2)
    dim: int = 256                 # token width d
    heads: int = 8                 # attention heads
    dim_head: int = 0              # 0 -> dim // heads
    mlp_ratio: int = 4             # feed-forward width / dim
    patch_div: int = 0             # patch = H_i // patch_div; 0 -> 32 where H_i/32 is whole, else 16

    def __post_init__(self):
        if self.n < 0 or self.m < 1:
            raise ValueError(f"ViT(n, m) needs n >= 0 and m >= 1. Got ({self.n}, {self.m}).")
        if self.layers and len(self.layers) != self.n:
            raise ValueError(f"vit.layers {self.layers} must name n={self.n} decoder layers.")
        if self.dim_head == 0 and self.dim % self.heads:
            raise ValueError(f"vit.dim {self.dim} must be divisible by vit.heads {self.heads}.")

    @property
    def head_dim(self) -> int:
        return self.dim_head or self.dim // self.heads


@dataclass
class AudioConfig:
    """ResNetSE34L (clovaai/voxceleb_trainer): SE basic blocks, self-attentive pooling, FC."""

    blocks: tuple[int, ...] = (3, 4, 6, 3)  # residual blocks per stage
    channels: tuple[int, ...] = (16, 32, 64, 128)  # channels per stage
    se_reduction: int = 8          # squeeze-excitation reduction
    input_norm: bool = False       # the original's InstanceNorm1d over mel bins; off for E_a (SPEC)


@dataclass
class SyncConfig:
    """Sync discriminator S = (S_v, S_a); S_a is ResNetSE34L with BatchNorm + ReLU."""

    size: int = 144                                 # S_v input side (the 192-frame box is 144x144)
    box: tuple[int, ...] = (48, 192, 24, 168)       # rows r0:r1, cols c0:c1 in a 192 frame; scaled
    frames: int = 5                                 # frames per S sample (T)
    visual_channels: tuple[int, ...] = (32, 64, 128, 256, 512)   # stem, then one stage per /2
    embed_dim: int = 512                            # width of S's audio/visual embeddings
    audio: AudioConfig = field(default_factory=AudioConfig)


@dataclass
class ModelConfig:
    """Everything that fixes RADIO's tensors. ``ModelConfig(resolution=96)`` is the ablation model.

    ablation: 'A' one encoder on concat(masked target, reference), f_W = f_a (512);
              'B' + separate E_s, f_W = (f_s, f_a) (1024);
              'C' + lower half of f_d plus f_s^i at the ``vit`` layers (no attention);
              'D' RADIO: ViT(n, m) blocks at those layers.
    """

    resolution: int = 192           # frame side in pixels: 192 (the paper) or 96 (ablations, CPU)
    ablation: str = "D"             # Table 2 variant: A | B | C | D (RADIO)
    channels: tuple[int, ...] = (64, 128, 256, 512, 512, 512)   # encoder layers 1..6
    style_dim: int = 512            # width of the style code f_s
    audio_dim: int = 512            # width of the audio code f_a
    mel_bins: int = 80              # mel bands per audio row
    mel_window: int = 20            # mel rows per frame's audio window (20 rows = 200 ms)
    noise: bool = True              # per-layer noise in training (always zero in eval mode)
    vit: ViTConfig = field(default_factory=ViTConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    disc_final: int = 6             # D's last feature map side
    mbstd_group: int = 4            # D's minibatch-stddev group size
    sync: SyncConfig = field(default_factory=SyncConfig)

    def __post_init__(self):
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {ABLATIONS}. Got {self.ablation!r}.")
        if len(self.channels) != 6:
            raise ValueError(f"channels must list the 6 encoder layers. Got {self.channels}.")
        if self.resolution % 32:
            raise ValueError(f"resolution must be divisible by 32 (four /2 steps, then a half). "
                             f"Got {self.resolution}.")
        for k in self.fidelity_layers:
            if not 2 <= k <= 6:
                raise ValueError(f"ViT/fidelity layers must be in 2..6 (f_s^1..f_s^5 exist). Got {k}.")
        if self.resolution % self.disc_final or (self.resolution // self.disc_final) & (
                self.resolution // self.disc_final - 1):
            raise ValueError(f"resolution / disc_final must be a power of 2. Got "
                             f"{self.resolution} / {self.disc_final}.")

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def w_dim(self) -> int:
        """Width of f_W: f_a alone for ablation A, (f_s, f_a) otherwise (1024)."""
        return self.audio_dim if self.ablation == "A" else self.style_dim + self.audio_dim

    @property
    def encoder_sizes(self) -> tuple[int, ...]:
        """Side of f^i, i = 1..6: (192, 96, 48, 24, 12, 12) at 192; (96, 48, 24, 12, 6, 6) at 96."""
        r = self.resolution
        return (r, r // 2, r // 4, r // 8, r // 16, r // 16)

    @property
    def fidelity_layers(self) -> tuple[int, ...]:
        """Decoder layers (1-based) whose input gets ViT (D) or the additive skip (C)."""
        if self.ablation in ("A", "B"):
            return ()
        return tuple(self.vit.layers) or tuple(range(7 - self.vit.n, 7))

    @property
    def patch_div(self) -> int:
        if self.vit.patch_div:
            return self.vit.patch_div
        return 32 if (self.resolution // 2) % 32 == 0 else 16

    def patch_size(self, side: int) -> int:
        """ViT patch for a feature map of side H_i: H_i // patch_div (at least 1)."""
        return max(1, side // self.patch_div)
