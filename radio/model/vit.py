"""ViT fidelity blocks (paper §3.2, appendix D), in the vit-pytorch style.

A ``ViTBlock`` sits in decoder layer k before its modulated conv. Its query is the lower half
of the decoder feature f_d^{k-1}; its key/value is the lower half of the style feature
f_s^{7-k} at the same resolution. Upper halves are never read. At 192: layer 5 works on
96x96 maps with patch 3, layer 6 on 192x192 maps with patch 6, so each lower half is a
16x32 grid = 512 tokens (8x16 = 128 at 96). The m attention layers of a block all attend to
the same key/value tokens. Tokens go back to pixels with a linear map + un-patchify and are
*added* to the lower half ("the attention output is then added to the intermediate
features"), which is then re-joined with the untouched upper half.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from einops.layers.torch import Rearrange
from torch import nn


class FeedForward(nn.Module):
    """Pre-LN MLP: (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, dim))

    def forward(self, x):
        return self.net(x)


class Attention(nn.Module):
    """Pre-LN multi-head attention; self-attention, or cross-attention when ``context`` is given.

    x (B, N, D), context (B, M, D_ctx) -> (B, N, D). The one Attention module of radio.
    """

    def __init__(self, dim: int, *, heads: int = 8, dim_head: int = 32, context_dim: int | None = None):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim) if context_dim is not None else None
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim or dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x, context=None, *, return_attention: bool = False):
        x = self.norm(x)
        context = x if context is None else self.norm_context(context)
        q = self.to_q(x)
        k, v = self.to_kv(context).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        if return_attention:
            attn = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)
            out = attn @ v
        else:
            attn, out = None, F.scaled_dot_product_attention(q, k, v)
        out = self.to_out(rearrange(out, "b h n d -> b n (h d)"))
        return (out, attn) if return_attention else out


def _patchify(channels: int, patch: int, dim: int) -> nn.Sequential:
    """(B, C, h*p, w*p) -> (B, h*w, D): linear patch embedding (LN on both sides, as vit-pytorch)."""
    patch_dim = channels * patch * patch
    return nn.Sequential(Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch, p2=patch),
                         nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim), nn.LayerNorm(dim))


class ViTBlock(nn.Module):
    """Lower-half cross-attention block: (f_d (B, C, H, W), f_s^i (B, C_s, H, W)) -> (B, C, H, W).

    Rows [H/2, H) of ``x`` are patchified (``patch``), attend ``depth`` times to the patchified
    rows [H/2, H) of ``context``, and the un-patchified result is added back; rows [0, H/2)
    of ``x`` pass through unchanged.
    """

    def __init__(self, *, channels: int, context_channels: int, size: int, patch: int, dim: int = 256,
                 depth: int = 2, heads: int = 8, dim_head: int = 32, mlp_ratio: int = 4):
        super().__init__()
        if size % 2 or (size // 2) % patch:
            raise ValueError(f"The lower half ({size // 2} x {size}) must tile into {patch}x{patch} patches.")
        self.size, self.patch = size, patch
        self.grid = (size // 2 // patch, size // patch)
        n = self.grid[0] * self.grid[1]
        self.to_tokens = _patchify(channels, patch, dim)
        self.to_context = _patchify(context_channels, patch, dim)
        self.pos_query = nn.Parameter(torch.randn(1, n, dim) * 0.02)
        self.pos_context = nn.Parameter(torch.randn(1, n, dim) * 0.02)
        self.layers = nn.ModuleList([
            nn.ModuleList([Attention(dim, heads=heads, dim_head=dim_head, context_dim=dim),
                           FeedForward(dim, dim * mlp_ratio)])
            for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.to_pixels = nn.Sequential(
            nn.Linear(dim, channels * patch * patch),
            Rearrange("b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=self.grid[0], p1=patch, p2=patch))

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, x: torch.Tensor, context: torch.Tensor, *, return_attention: bool = False):
        b, c, h, w = x.shape
        if (h, w) != (self.size, self.size) or context.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"Expected query and key/value maps of {self.size}x{self.size}. "
                             f"Got {tuple(x.shape)} and {tuple(context.shape)}.")
        upper, lower = x[:, :, : h // 2], x[:, :, h // 2:]
        tokens = self.to_tokens(lower) + self.pos_query              # (B, N, D)
        ctx = self.to_context(context[:, :, h // 2:]) + self.pos_context
        maps = []
        for attn, ff in self.layers:
            if return_attention:
                out, a = attn(tokens, ctx, return_attention=True)
                maps.append(a)
            else:
                out = attn(tokens, ctx)
            tokens = tokens + out
            tokens = tokens + ff(tokens)
        lower = lower + self.to_pixels(self.norm(tokens))
        out = torch.cat([upper, lower], dim=2)
        return (out, maps) if return_attention else out
