"""Super token attention, STA (Huang, Zhou, Wang, Wang, He; "Vision Transformer with
Super Token Sampling").

1. Initial super tokens S^0: average pooling over an s x s grid.
2. Sparse association (T iterations): each token i relates only to the 9 super
   tokens around its grid cell,
       Q_ij = softmax_j( x_i . S_j / sqrt(d) ),   j in the 3x3 neighbourhood (inside the grid)
       S_j  = sum_i Q_ij x_i / sum_i Q_ij          (column-normalised Q^T X)
3. Multi-head self-attention among the super tokens: S = MHSA(S) (``attnkit.attention``).
4. Token upsampling: X_out = Q S, i.e. out_i = sum_j Q_ij S_j.

Out-of-grid neighbours of border cells do not exist and get no weight.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...api import attention
from ...validation import check_divides, check_feature_map, check_grid, check_int
from ._vit import merge_heads, split_heads
from ..factory import factory_kwargs


@factory_kwargs
class SuperTokenAttention(nn.Module):
    paper = "Vision Transformer with Super Token Sampling"

    def __init__(self, dim: int, heads: int = 1, stoken: int = 4, iters: int = 1):
        super().__init__()
        self.dim, self.heads = check_int("dim", dim), check_int("heads", heads)
        self.stoken, self.iters = check_int("stoken", stoken), check_int("iters", iters)
        check_divides("dim", dim, "heads", heads)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def association(self, pix: torch.Tensor, S: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """pix (B, M, s^2, C), S (B, C, hh, ww) -> Q (B, M, s^2, 9), a softmax over the 9 neighbours."""
        B, M, _, C = pix.shape
        near = F.unfold(S, 3, padding=1).reshape(B, C, 9, M).permute(0, 3, 1, 2)  # (B, M, C, 9)
        logits = (pix @ near) * C ** -0.5
        return torch.softmax(logits.masked_fill(~valid[:, None, :], float("-inf")), dim=-1)

    @staticmethod
    def sample(pix: torch.Tensor, Q: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """S_j = sum_i Q_ij x_i / sum_i Q_ij, gathered back from every cell that neighbours j."""
        B, M, _, C = pix.shape
        num = (pix.transpose(-1, -2) @ Q).permute(0, 2, 3, 1).reshape(B, C * 9, M)
        den = Q.sum(dim=2).transpose(1, 2)  # (B, 9, M)
        return F.fold(num, grid, 3, padding=1) / F.fold(den, grid, 3, padding=1)

    def refine(self, S: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention among the super tokens, (B, C, hh, ww) -> same."""
        B, C, hh, ww = S.shape
        t = S.flatten(2).transpose(1, 2)
        q, k, v = (split_heads(p, self.heads) for p in self.qkv(t).chunk(3, dim=-1))
        return self.proj(merge_heads(attention(q, k, v, "softmax"))).transpose(1, 2).reshape(B, C, hh, ww)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.dim)
        check_grid(x, self.stoken, "stoken")
        B, C, H, W = x.shape
        s = self.stoken
        hh, ww = H // s, W // s
        pix = x.reshape(B, C, hh, s, ww, s).permute(0, 2, 4, 3, 5, 1).reshape(B, hh * ww, s * s, C)
        valid = F.unfold(torch.ones(1, 1, hh, ww, device=x.device), 3, padding=1)[0].T > 0  # (M, 9)
        S = F.avg_pool2d(x, s)
        for _ in range(self.iters):
            Q = self.association(pix, S, valid)
            S = self.sample(pix, Q, (hh, ww))
        S = self.refine(S)
        near = F.unfold(S, 3, padding=1).reshape(B, C, 9, hh * ww).permute(0, 3, 1, 2)  # (B, M, C, 9)
        out = near @ Q.transpose(-1, -2)  # (B, M, C, s^2)
        return out.reshape(B, hh, ww, C, s, s).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)
