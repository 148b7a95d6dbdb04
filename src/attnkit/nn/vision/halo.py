"""Halo attention, blocked local self-attention (Vaswani, Ramachandran, Srinivas,
Parmar, Hechtman, Shlens; "Scaling Local Self-Attention for Parameter Efficient
Visual Backbones").

The map is cut into b x b query blocks; each block attends to the
(b + 2h) x (b + 2h) neighbourhood around it (its "halo" of width h). Keys and
values come from the map zero-padded by h, unmasked, as the paper found best
(padding keys are zero vectors). Logits carry relative position embeddings,
one table per axis:

    logit(i, j) = q_i . k_j + q_i . r^h[row_j - row_i] + q_i . r^w[col_j - col_i],   q_i scaled by d^-1/2

Output has heads * dim_head channels (the layer replaces a spatial convolution
inside a bottleneck). The attention is ``attnkit.attention`` with the position
logits as its additive ``mask``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...api import attention
from ...validation import check_feature_map, check_grid, check_int
from ..factory import factory_kwargs


def _offsets(block: int, halo: int) -> torch.Tensor:
    """(b^2, w^2) per-axis pairs: index of (key - query) offsets into a 2(b+h)-1 table, rows then columns."""
    win = block + 2 * halo
    qr, qc = torch.meshgrid(torch.arange(block), torch.arange(block), indexing="ij")
    kr, kc = torch.meshgrid(torch.arange(win), torch.arange(win), indexing="ij")
    shift = block + halo - 1
    rows = kr.flatten()[None, :] - halo - qr.flatten()[:, None] + shift
    cols = kc.flatten()[None, :] - halo - qc.flatten()[:, None] + shift
    return torch.stack([rows, cols])


@factory_kwargs
class HaloAttention(nn.Module):
    paper = "Scaling Local Self-Attention for Parameter Efficient Visual Backbones"

    def __init__(self, dim: int, heads: int = 4, block: int = 8, halo: int = 3, dim_head: int | None = None):
        super().__init__()
        self.dim, self.heads = check_int("dim", dim), check_int("heads", heads)
        self.block, self.halo = check_int("block", block), check_int("halo", halo, minimum=0)
        if dim_head is None:
            if dim % heads:
                raise ValueError(f"dim ({dim}) must be divisible by heads ({heads}) when dim_head is not given")
            dim_head = dim // heads
        self.dim_head = check_int("dim_head", dim_head)
        inner = heads * dim_head
        self.q = nn.Conv2d(dim, inner, 1, bias=False)
        self.kv = nn.Conv2d(dim, 2 * inner, 1, bias=False)
        size = 2 * (block + halo) - 1
        self.rel_h = nn.Parameter(torch.randn(size, dim_head) * dim_head ** -0.5)
        self.rel_w = nn.Parameter(torch.randn(size, dim_head) * dim_head ** -0.5)
        self.register_buffer("offsets", _offsets(block, halo), persistent=False)

    def position_logits(self, q: torch.Tensor) -> torch.Tensor:
        """(N, heads, b^2, d) scaled queries -> (N, heads, b^2, w^2) relative position logits,
        q . (r^h + r^w) with the embeddings looked up per (query, key) pair."""
        emb = self.rel_h[self.offsets[0]] + self.rel_w[self.offsets[1]]  # (b^2, w^2, d)
        return torch.einsum("nhid,ijd->nhij", q, emb)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.dim)
        check_grid(x, self.block, "block")
        B, _, H, W = x.shape
        b, h, Hh, d = self.block, self.halo, self.heads, self.dim_head
        nh, nw, win = H // b, W // b, b + 2 * h
        q = self.q(x).reshape(B, Hh, d, nh, b, nw, b).permute(0, 3, 5, 1, 4, 6, 2).reshape(-1, Hh, b * b, d)
        q = q * d ** -0.5
        kv = self.kv(F.pad(x, (h, h, h, h))).unfold(2, win, b).unfold(3, win, b)  # (B, 2 inner, nh, nw, win, win)
        kv = kv.reshape(B, 2, Hh, d, nh, nw, win * win).permute(1, 0, 4, 5, 2, 6, 3).reshape(2, -1, Hh, win * win, d)
        o = attention(q, kv[0], kv[1], "softmax", scale=1.0, mask=self.position_logits(q))
        o = o.reshape(B, nh, nw, Hh, b, b, d).permute(0, 3, 6, 1, 4, 2, 5)
        return o.reshape(B, Hh * d, H, W)
