"""The layer computing the Titans memory's inputs (the input module of ``titans``).

Behrouz et al., "Titans: Learning to Memorize at Test Time": data-dependent step size
``theta``, momentum decay ``eta`` and forgetting ``alpha``, each ``sigmoid`` of a
linear map of the token, per head; and the memory's learned initial weights ``w1``, ``w2``.
"""
from __future__ import annotations

import torch
from torch import nn


class TitansInputs(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or head_dim
        self.gates = nn.Linear(dim, 3 * heads)
        self.w1 = nn.Parameter(torch.randn(heads, head_dim, hidden) / head_dim**0.5)
        self.w2 = nn.Parameter(torch.randn(heads, hidden, head_dim) / hidden**0.5)

    def forward(self, x, q, k, v) -> dict:
        theta, eta, alpha = torch.sigmoid(self.gates(x)).transpose(1, 2).to(q.dtype).chunk(3, dim=1)  # (B, H, N) each
        return {"theta": theta, "eta": eta, "alpha": alpha, "w1": self.w1.to(q.dtype), "w2": self.w2.to(q.dtype)}
