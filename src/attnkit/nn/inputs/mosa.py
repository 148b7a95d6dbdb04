"""The router of Mixture of Sparse Attention inside a layer (the input module of ``mosa``).

Piekos et al., "Mixture of Sparse Attention": each head's router scores every
token, ``r = sigmoid(X W_r)``, one linear map from the layer input per head
(no bias, as the authors' code). The mechanism keeps each head's top-k tokens
and weights their outputs by ``r``, which is how the router learns.
"""
from __future__ import annotations

import torch
from torch import nn


class MoSARouter(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.proj = nn.Linear(dim, heads, bias=False)

    def forward(self, x, q, k, v) -> dict:
        return {"router": torch.sigmoid(self.proj(x)).transpose(1, 2).to(q.dtype)}  # (B, H, N)
