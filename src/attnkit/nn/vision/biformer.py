"""Bi-Level Routing Attention on NCHW maps (Zhu et al., "BiFormer: Vision Transformer with Bi-Level
Routing Attention").

The map is cut into ``n_win x n_win`` windows (the regions); q, k, v come from a
1 x 1 convolution, each window routes to its ``top_k`` most related windows
(mean query . mean key over all channels) and its tokens attend to theirs; a
depth-wise ``side_dwconv x side_dwconv`` convolution of V (the paper's local
context enhancement, ``LCE``) is added, then a 1 x 1 output convolution::

    O = W_o (Attention(Q, K^g, V^g) + LCE(V))

The token layout puts each window's tokens next to each other, so the routing
and attention are the registered mechanism ``bilevel_routing`` with
``region_size = (H / n_win) (W / n_win)``. Scores are scaled by ``dim^-1/2``
(the full width, as the authors' code does). Height and width must be
multiples of ``n_win``. Parameters: ``4 dim^2 + 5 dim + dim side_dwconv^2``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...api import attention
from ...validation import check_feature_map, check_grid, check_int
from ..factory import factory_kwargs


@factory_kwargs
class BiLevelRoutingAttention(nn.Module):
    paper = "BiFormer: Vision Transformer with Bi-Level Routing Attention"

    def __init__(self, dim: int, heads: int = 8, n_win: int = 7, top_k: int = 4, side_dwconv: int = 5):
        super().__init__()
        self.dim, self.heads = check_int("dim", dim), check_int("heads", heads)
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.n_win, self.top_k = check_int("n_win", n_win), check_int("top_k", top_k)
        check_int("side_dwconv", side_dwconv)
        if side_dwconv % 2 == 0:
            raise ValueError(f"side_dwconv must be odd (a centred depth-wise kernel), got {side_dwconv}")
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.lce = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
        self.out = nn.Conv2d(dim, dim, 1)

    def _tokens(self, t: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, heads, N, C / heads)``, window by window."""
        B, C, H, W = t.shape
        n = self.n_win
        t = t.reshape(B, C, n, H // n, n, W // n).permute(0, 2, 4, 3, 5, 1).reshape(B, H * W, C)
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def _map(self, t: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B = t.shape[0]
        n = self.n_win
        t = t.transpose(1, 2).reshape(B, n, n, H // n, W // n, self.dim)
        return t.permute(0, 5, 1, 3, 2, 4).reshape(B, self.dim, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.dim)
        check_grid(x, self.n_win, "n_win")
        H, W = x.shape[2], x.shape[3]
        q, k, v = self.qkv(x).chunk(3, dim=1)
        o = attention(self._tokens(q), self._tokens(k), self._tokens(v), "bilevel_routing",
                      region_size=(H // self.n_win) * (W // self.n_win), top_k=self.top_k, scale=self.dim**-0.5)
        return self.out(self._map(o, H, W) + self.lce(v))
