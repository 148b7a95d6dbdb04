"""Channel group attention block of DaViT (Ding, Xiao, Codella, Luo, Wang, Yuan;
"DaViT: Dual Attention Vision Transformers").

Channel tokens: transpose the (P tokens x C channels) map so each channel is a
token whose features are all P positions, split the channels into N_g groups of
C_g, and attend among the channels of each group:

    A(Q_i, K_i, V_i) = softmax(Q_i^T K_i / sqrt(C_g)) V_i^T      (C_g x C_g scores)

Cost is linear in P, and every output position sees the whole image. The block
is DaViT's channel block: x + CPE(x) (3x3 depthwise conv), z = x + Attn(LN(x)),
z + CPE(z), out = z + MLP(LN(z)). The attention is ``attnkit.attention`` with the
channel tokens as its sequence.

:class:`SpatialWindowAttention` is DaViT's spatial block, the same layout with
multi-head self-attention inside non-overlapping windows (positions come from the
CPEs, no relative bias); :class:`DualAttentionBlock` is the paper's pair, spatial
block then channel block.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...api import attention
from ...validation import check_divides, check_feature_map, check_grid, check_int
from ._vit import Mlp, merge_heads, split_heads, window_merge, window_partition
from ..factory import factory_kwargs


class _DaViTBlock(nn.Module):
    """x + CPE(x); z = x + mix(LN(x)); z + CPE(z); z + MLP(LN(z)), NCHW in and out."""

    def __init__(self, dim: int, groups: int, mlp_ratio: float, groups_name: str):
        super().__init__()
        self.dim, self.groups = check_int("dim", dim), check_int(groups_name, groups)
        check_divides("dim", dim, groups_name, groups)
        self.cpe1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.cpe2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.dim)
        B, C, H, W = x.shape
        x = x + self.cpe1(x)
        t = x.flatten(2).transpose(1, 2)
        t = t + self.mix(self.norm1(t), H, W)
        x = t.transpose(1, 2).reshape(B, C, H, W)
        x = x + self.cpe2(x)
        t = x.flatten(2).transpose(1, 2)
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(B, C, H, W)


@factory_kwargs
class ChannelGroupAttention(_DaViTBlock):
    paper = "DaViT: Dual Attention Vision Transformers"

    def __init__(self, dim: int, groups: int = 8, mlp_ratio: float = 4.0):
        super().__init__(dim, groups, mlp_ratio, "groups")

    def mix(self, t: torch.Tensor, H: int, W: int) -> torch.Tensor:
        return self.channel_attention(t)

    def channel_attention(self, t: torch.Tensor) -> torch.Tensor:
        """(B, P, C) -> (B, P, C): attention among the channels of each group."""
        q, k, v = (split_heads(p, self.groups).transpose(-1, -2) for p in self.qkv(t).chunk(3, dim=-1))
        cg = self.dim // self.groups
        o = attention(q, k, v, "softmax", scale=cg ** -0.5)  # (B, N_g, C_g, P)
        return self.proj(merge_heads(o.transpose(-1, -2)))


@factory_kwargs
class SpatialWindowAttention(_DaViTBlock):
    paper = "DaViT: Dual Attention Vision Transformers"

    def __init__(self, dim: int, heads: int = 8, window: int = 7, mlp_ratio: float = 4.0):
        super().__init__(dim, heads, mlp_ratio, "heads")
        self.window = check_int("window", window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.dim)
        check_grid(x, self.window, "window")
        return super().forward(x)

    def mix(self, t: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, _, C = t.shape
        w = window_partition(t.reshape(B, H, W, C), self.window)
        q, k, v = (split_heads(p, self.groups) for p in self.qkv(w).chunk(3, dim=-1))
        o = self.proj(merge_heads(attention(q, k, v, "softmax")))
        return window_merge(o, self.window, B, H, W).reshape(B, H * W, C)


@factory_kwargs
class DualAttentionBlock(nn.Module):
    """DaViT's unit: a spatial window block, then a channel group block."""

    paper = "DaViT: Dual Attention Vision Transformers"

    def __init__(self, dim: int, heads: int = 8, groups: int = 8, window: int = 7, mlp_ratio: float = 4.0):
        super().__init__()
        self.spatial = SpatialWindowAttention(dim, heads, window, mlp_ratio)
        self.channel = ChannelGroupAttention(dim, groups, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel(self.spatial(x))
