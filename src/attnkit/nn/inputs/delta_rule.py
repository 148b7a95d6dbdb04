"""Layers that compute the tensor inputs of the delta-rule mechanisms from hidden states.

Each is its mechanism's input module (:func:`attnkit.nn.inputs.input_module`):
``forward(x, q, k, v) -> dict`` of tensor inputs for the new tokens ``x (B, N, dim)``,
laid out ``(B, heads, N)`` or ``(B, heads, N, head_dim)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _heads_first(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, N, heads * d) -> (B, heads, N, d)``."""
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)


class DeltaNetBeta(nn.Module):
    """DeltaNet's writing strength ``beta_t = sigmoid(W_beta x_t)``, one per head
    ("Parallelizing Linear Transformers with the Delta Rule over Sequence Length")."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.beta = nn.Linear(dim, heads, bias=False)

    def forward(self, x, q, k, v) -> dict:
        return {"beta": torch.sigmoid(self.beta(x)).transpose(1, 2).to(q.dtype)}


class GatedDeltaNetGates(DeltaNetBeta):
    """Gated DeltaNet's ``beta`` and decay ("Gated Delta Networks: Improving Mamba2 with
    Delta Rule"): the decay is Mamba-2's, ``g = log(alpha) = -exp(A_log) softplus(W_a x + dt_bias)``."""

    def __init__(self, dim: int, heads: int):
        super().__init__(dim, heads)
        self.alpha = nn.Linear(dim, heads, bias=False)
        dt = torch.exp(torch.rand(heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus of dt
        self.A_log = nn.Parameter(torch.log(torch.empty(heads).uniform_(1, 16)))
        self.dt_bias._no_weight_decay = self.A_log._no_weight_decay = True  # as fla's layer: no weight decay

    def forward(self, x, q, k, v) -> dict:
        g = -self.A_log.exp() * F.softplus(self.alpha(x) + self.dt_bias)  # (B, N, H)
        return {**super().forward(x, q, k, v), "g": g.transpose(1, 2).to(q.dtype)}


class KDAGates(DeltaNetBeta):
    """KDA's ``beta`` and channel-wise decay ("Kimi Linear"): a low-rank projection to one
    gate per key channel, ``g = lower_bound * sigmoid(exp(A_log) (W_up W_down x + dt_bias))``.

    This is the bounded ("safe") form of the KDA gate: with ``lower_bound = -1`` a chunk of
    64 tokens decays at most by ``e^-64``, which the chunked form's float32 factorisation
    needs (``attnkit.families.delta_rule.forms_chunked``).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, rank: int | None = None, lower_bound: float = -1.0):
        super().__init__(dim, heads)
        rank = rank or head_dim
        self.heads, self.lower_bound = heads, lower_bound
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, heads * head_dim, bias=False)
        self.dt_bias = nn.Parameter(torch.zeros(heads * head_dim))
        self.A_log = nn.Parameter(torch.zeros(heads))

    def forward(self, x, q, k, v) -> dict:
        z = _heads_first(self.up(self.down(x)) + self.dt_bias, self.heads)  # (B, H, N, Dk)
        g = self.lower_bound * torch.sigmoid(self.A_log.exp()[:, None, None] * z)
        return {**super().forward(x, q, k, v), "g": g.to(q.dtype)}
