"""The layers computing the log-linear mechanisms' inputs.

Guo et al., "Log-Linear Attention", as in the authors' code (``lambda_mode="positive"``):
the level weights ``lam = softplus(L * W_lam x)``, one per head and Fenwick level, with
``W_lam`` a projection without bias and ``L`` a learned per-head, per-level scale that
starts at one (:class:`LevelWeights`). Beside them, the base recurrence's inputs:
Mamba-2's decay ``g = dt * A`` with ``dt = softplus(W_dt x + dt_bias)``, ``A = -exp(A_log)``
for ``log_linear_mamba2`` (:class:`LogLinearInputs`); Gated DeltaNet's ``beta`` and decay
for ``log_linear_gated_deltanet`` (:class:`LogLinearGatedDeltaNetInputs`), whose ``lam``
the authors divide by the attention scale (their ``SCALE_LAMBDA``): with attnkit's default
``scale = head_dim ** -0.5`` folded into q, the levels then read unit-norm queries unscaled.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .delta_rule import GatedDeltaNetGates


class LevelWeights(nn.Module):
    """``lam = softplus(L * W_lam x)`` as ``(B, heads, N, levels)`` for ``x (B, N, dim)``; ``L (heads, levels)``
    starts at ones."""

    def __init__(self, dim: int, heads: int, levels: int = 32):
        super().__init__()
        self.heads, self.levels = heads, levels
        self.proj = nn.Linear(dim, heads * levels, bias=False)
        self.scale = nn.Parameter(torch.ones(heads, levels))

    def forward(self, x):
        dl = self.proj(x).unflatten(-1, (self.heads, self.levels))  # (B, N, heads, levels)
        return F.softplus(self.scale * dl).transpose(1, 2)


class LogLinearInputs(nn.Module):
    def __init__(self, dim: int, heads: int, levels: int = 32):
        super().__init__()
        self.dt = nn.Linear(dim, heads, bias=False)
        dt = torch.exp(torch.rand(heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus of dt
        self.A_log = nn.Parameter(torch.log(torch.empty(heads).uniform_(1, 16)))
        self.lam = LevelWeights(dim, heads, levels)

    def forward(self, x, q, k, v) -> dict:
        g = -self.A_log.exp() * F.softplus(self.dt(x) + self.dt_bias)  # (B, N, H)
        return {"g": g.transpose(1, 2).to(q.dtype), "lam": self.lam(x).to(q.dtype)}


class LogLinearGatedDeltaNetInputs(GatedDeltaNetGates):
    """Gated DeltaNet's ``beta`` and ``g`` with the level weights ``lam``, divided by the default attention
    scale ``head_dim ** -0.5`` as the authors do."""

    def __init__(self, dim: int, heads: int, head_dim: int, levels: int = 32):
        super().__init__(dim, heads)
        self.lam = LevelWeights(dim, heads, levels)
        self.lam_gain = head_dim**0.5

    def forward(self, x, q, k, v) -> dict:
        return {**super().forward(x, q, k, v), "lam": (self.lam(x) * self.lam_gain).to(q.dtype)}
