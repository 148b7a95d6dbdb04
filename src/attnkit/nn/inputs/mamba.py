"""The learned step sizes, rates and skip of Mamba-1's selective scan (the input module of ``mamba``).

Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", section 3.6:
``dt = softplus(W_up W_down x + b)`` (a low-rank projection of rank ``ceil(dim / 16)``, the
bias set so that ``dt`` starts log-uniform in [0.001, 0.1]); ``A = -exp(A_log)`` with the S4D-real
initialisation ``A[d, n] = -(n + 1)``; ``D = 1``.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class MambaInputs(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, v_dim: int | None = None):
        super().__init__()
        v_dim = head_dim if v_dim is None else v_dim
        self.heads, rank = heads, math.ceil(dim / 16)
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, heads * v_dim)
        dt = torch.exp(torch.rand(heads * v_dim) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
        with torch.no_grad():
            self.up.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, head_dim + 1, dtype=torch.float32)).repeat(heads, v_dim, 1))
        self.D = nn.Parameter(torch.ones(heads, v_dim))

    def forward(self, x, q, k, v) -> dict:
        dt = nn.functional.softplus(self.up(self.down(x)))  # (B, N, H * Dv)
        return {"dt": dt.unflatten(-1, (self.heads, -1)).transpose(1, 2).to(q.dtype),
                "A": -torch.exp(self.A_log).to(q.dtype), "D": self.D.to(q.dtype)}
