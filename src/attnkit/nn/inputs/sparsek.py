"""The scoring network of SPARSEK attention inside a layer (the input module of ``sparsek``).

Lou et al., "Sparser is Faster and Less is More": each KV pair gets one score
``u_j = x_j w_score``, independent of the queries; here one linear map of the
layer input per kv head (no bias).
"""
from __future__ import annotations

from torch import nn


class SparseKScores(nn.Module):
    def __init__(self, dim: int, kv_heads: int):
        super().__init__()
        self.proj = nn.Linear(dim, kv_heads, bias=False)

    def forward(self, x, q, k, v) -> dict:
        return {"scores": self.proj(x).transpose(1, 2).to(q.dtype)}  # (B, Hkv, N)
