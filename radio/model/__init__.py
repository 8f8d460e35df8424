"""The RADIO model: encoders, StyleGAN2 decoder with ViT blocks, discriminators.

Images are float RGB in [-1, 1], (B, 3, H, W); mel windows are model-range log-mel (B, 20, 80).
"""
from .audio import ResNetSE34L
from .config import AudioConfig, ModelConfig, SyncConfig, ViTConfig
from .discriminator import Discriminator
from .encoders import ContentEncoder, StyleEncoder, mask_lower_half
from .generator import Generator
from .radio import RADIO
from .summary import model_summary, parameter_counts
from .sync import SyncNet, sync_bce, to_sync_input
from .vit import Attention, FeedForward, ViTBlock

__all__ = [
    "RADIO", "ModelConfig", "ViTConfig", "AudioConfig", "SyncConfig", "ContentEncoder", "StyleEncoder",
    "ResNetSE34L", "Generator", "ViTBlock", "Attention", "FeedForward", "Discriminator", "SyncNet",
    "sync_bce", "to_sync_input", "mask_lower_half", "model_summary", "parameter_counts",
]
