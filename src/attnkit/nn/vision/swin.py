"""Swin Transformer block, windowed (W-MSA) or shifted-window (SW-MSA) (Liu et al.;
"Swin Transformer: Hierarchical Vision Transformer using Shifted Windows").

    z = x + (S)W-MSA(LN(x));   out = z + MLP(LN(z))

W-MSA: self-attention inside non-overlapping M x M windows, with a learned
relative position bias B[dy, dx] per head (a (2M-1)^2 table). SW-MSA (shift s > 0):
cyclically roll the map by (-s, -s), attend in the regular windows with an
attention mask that keeps tokens from different image regions apart, roll back.
That equals window attention over windows displaced by s and truncated at the
image border (``tests/vision`` checks it against that brute force). The
attention itself is ``attnkit.attention`` (softmax) with bias + mask passed as
its additive ``mask``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...api import attention
from ...validation import check_divides, check_feature_map, check_grid, check_int
from ._vit import Mlp, merge_heads, split_heads, window_merge, window_partition
from ..factory import factory_kwargs


def relative_index(window: int) -> torch.Tensor:
    """(M^2, M^2) index into the (2M-1)^2 bias table for every (query, key) pair in a window."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx


@factory_kwargs
class SwinBlock(nn.Module):
    paper = "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows"

    def __init__(self, dim: int, heads: int, window: int = 7, shift: int = 0, mlp_ratio: float = 4.0):
        super().__init__()
        self.dim, self.heads = check_int("dim", dim), check_int("heads", heads)
        self.window = check_int("window", window)
        self.shift = check_int("shift", shift, minimum=0)
        check_divides("dim", dim, "heads", heads)
        if shift >= window:
            raise ValueError(f"shift must be smaller than window ({window}), got {shift}")
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = Mlp(dim, mlp_ratio)
        self.bias_table = nn.Parameter(torch.empty((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.register_buffer("bias_index", relative_index(window), persistent=False)

    def relative_bias(self) -> torch.Tensor:
        """(heads, M^2, M^2) relative position bias."""
        return self.bias_table[self.bias_index].permute(2, 0, 1)

    def shift_mask(self, H: int, W: int, device) -> torch.Tensor:
        """(nW, 1, M^2, M^2) additive mask: -inf between tokens of different regions of the rolled map."""
        M, s = self.window, self.shift
        labels = torch.zeros(H, W, device=device)
        region = 0
        for hs in (slice(0, H - M), slice(H - M, H - s), slice(H - s, H)):
            for ws in (slice(0, W - M), slice(W - M, W - s), slice(W - s, W)):
                labels[hs, ws] = region
                region += 1
        lab = window_partition(labels[None, :, :, None], M)[..., 0]  # (nW, M^2)
        apart = lab[:, :, None] != lab[:, None, :]
        return torch.zeros(apart.shape, device=device).masked_fill(apart, float("-inf"))[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.dim)
        check_grid(x, self.window, "window")
        B, C, H, W = x.shape
        M, s = self.window, self.shift
        t = x.permute(0, 2, 3, 1)
        h = self.norm1(t)
        if s:
            h = torch.roll(h, shifts=(-s, -s), dims=(1, 2))
        q, k, v = (split_heads(part, self.heads) for part in self.qkv(window_partition(h, M)).chunk(3, dim=-1))
        bias = self.relative_bias()[None]
        if s:
            bias = bias + self.shift_mask(H, W, x.device).to(bias.dtype)
        nW = (H // M) * (W // M)
        bias = bias.expand(nW, -1, -1, -1).repeat(B, 1, 1, 1)  # windows are batch-major
        o = self.proj(merge_heads(attention(q, k, v, "softmax", mask=bias)))
        h = window_merge(o, M, B, H, W)
        if s:
            h = torch.roll(h, shifts=(s, s), dims=(1, 2))
        t = t + h
        t = t + self.mlp(self.norm2(t))
        return t.permute(0, 3, 1, 2)
