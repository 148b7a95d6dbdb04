"""The layer computing log-linear Mamba-2's inputs (``spec.extra["module"]`` of ``log_linear_mamba2``).

Guo et al., "Log-Linear Attention": Mamba-2's decay ``g = dt * A`` with
``dt = softplus(W_dt x + dt_bias)``, ``A = -exp(A_log)``, and the level weights
``lam = softplus(W_lam x)``, one per head and Fenwick level.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LogLinearInputs(nn.Module):
    def __init__(self, dim: int, heads: int, levels: int = 32):
        super().__init__()
        self.heads, self.levels = heads, levels
        self.dt = nn.Linear(dim, heads, bias=False)
        dt = torch.exp(torch.rand(heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus of dt
        self.A_log = nn.Parameter(torch.log(torch.empty(heads).uniform_(1, 16)))
        self.lam = nn.Linear(dim, heads * levels, bias=True)

    def forward(self, x, q, k, v) -> dict:
        g = -self.A_log.exp() * F.softplus(self.dt(x) + self.dt_bias)  # (B, N, H)
        lam = F.softplus(self.lam(x)).unflatten(-1, (self.heads, self.levels)).transpose(1, 2)
        return {"g": g.transpose(1, 2).to(q.dtype), "lam": lam.to(q.dtype)}
