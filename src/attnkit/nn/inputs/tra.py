"""The forget gates of Threshold Relative Attention inside a layer (the input module of ``tra``).

Opper et al., "TRA: Better Length Generalisation with Threshold Relative Attention": each token's
gate logit comes from a linear map of the layer input, one per kv head (the authors' notebook:
``delta_proj(x)``, one per head); the mechanism takes ``log sigmoid`` of it.
"""
from __future__ import annotations

from torch import nn


class TRAForget(nn.Module):
    def __init__(self, dim: int, kv_heads: int):
        super().__init__()
        self.proj = nn.Linear(dim, kv_heads)

    def forward(self, x, q, k, v) -> dict:
        return {"forget": self.proj(x).transpose(1, 2).to(q.dtype)}  # (B, Hkv, N)
