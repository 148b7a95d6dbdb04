"""Spatially separable self-attention of Twins-SVT (Chu et al.; "Twins: Revisiting
the Design of Spatial Attention in Vision Transformers").

- LSA, locally-grouped self-attention: the map is cut into k x k windows and
  tokens attend only inside their window.
- GSA, global sub-sampled attention: every token attends to a summary of the
  whole map, keys/values computed from a k x k stride-k convolution of it
  (followed by LayerNorm), so each sub-window contributes one key.

Each is a pre-norm transformer layer (z = x + Attn(LN(x)); out = z + MLP(LN(z)));
:class:`TwinsSVTBlock` is the paper's LSA layer followed by a GSA layer. The
attention is ``attnkit.attention`` (softmax).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...api import attention
from ...validation import check_divides, check_feature_map, check_grid, check_int
from ._vit import Mlp, merge_heads, split_heads, window_merge, window_partition
from ..factory import factory_kwargs


class _Layer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.dim, self.heads = check_int("dim", dim), check_int("heads", heads)
        check_divides("dim", dim, "heads", heads)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.dim)
        t = x.permute(0, 2, 3, 1)
        t = t + self.mix(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return t.permute(0, 3, 1, 2)


@factory_kwargs
class LocallyGroupedAttention(_Layer):
    paper = "Twins: Revisiting the Design of Spatial Attention in Vision Transformers"

    def __init__(self, dim: int, heads: int, window: int = 7, mlp_ratio: float = 4.0):
        super().__init__(dim, heads, mlp_ratio)
        self.window = check_int("window", window)
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.dim)
        check_grid(x, self.window, "window")
        return super().forward(x)

    def mix(self, t: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = t.shape
        w = window_partition(t, self.window)
        q, k, v = (split_heads(p, self.heads) for p in self.qkv(w).chunk(3, dim=-1))
        o = self.proj(merge_heads(attention(q, k, v, "softmax")))
        return window_merge(o, self.window, B, H, W)


@factory_kwargs
class GlobalSubsampledAttention(_Layer):
    paper = "Twins: Revisiting the Design of Spatial Attention in Vision Transformers"

    def __init__(self, dim: int, heads: int, sr_ratio: int = 7, mlp_ratio: float = 4.0):
        super().__init__(dim, heads, mlp_ratio)
        self.sr_ratio = check_int("sr_ratio", sr_ratio)
        self.q, self.kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.sr_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.dim)
        check_grid(x, self.sr_ratio, "sr_ratio")
        return super().forward(x)

    def summary(self, t: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, HW / sr^2, C): the sub-sampled tokens keys and values come from."""
        if self.sr_ratio == 1:
            return t.flatten(1, 2)
        s = self.sr(t.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        return self.sr_norm(s)

    def mix(self, t: torch.Tensor) -> torch.Tensor:
        B, H, W, C = t.shape
        q = split_heads(self.q(t.flatten(1, 2)), self.heads)
        k, v = (split_heads(p, self.heads) for p in self.kv(self.summary(t)).chunk(2, dim=-1))
        return self.proj(merge_heads(attention(q, k, v, "softmax"))).reshape(B, H, W, C)


@factory_kwargs
class TwinsSVTBlock(nn.Module):
    """One LSA layer then one GSA layer (the unit Twins-SVT stacks)."""

    paper = "Twins: Revisiting the Design of Spatial Attention in Vision Transformers"

    def __init__(self, dim: int, heads: int, window: int = 7, sr_ratio: int = 7, mlp_ratio: float = 4.0):
        super().__init__()
        self.local = LocallyGroupedAttention(dim, heads, window, mlp_ratio)
        self.glob = GlobalSubsampledAttention(dim, heads, sr_ratio, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.glob(self.local(x))
