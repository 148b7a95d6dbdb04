"""Layers that compute the tensor inputs (gates, step sizes) of the gated linear mechanisms.

Each is its mechanism's input module (:func:`attnkit.nn.inputs.input_module`):
``forward(x, q, k, v) -> dict`` of tensor inputs for the new tokens ``x (B, N, dim)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GLAGate(nn.Module):
    """GLA's forget gate (Yang et al., "Gated Linear Attention Transformers with
    Hardware-Efficient Training"): ``alpha = sigmoid(x W_1 W_2 + b)^(1/tau)``
    with a low-rank ``W_1 W_2`` (rank 16) and ``tau = 16``; returns ``gk = log(alpha)``."""

    def __init__(self, dim: int, heads: int, head_dim: int, rank: int = 16, tau: float = 16.0):
        super().__init__()
        self.heads, self.tau = heads, tau
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, heads * head_dim, bias=True)

    def forward(self, x, q, k, v) -> dict:
        gk = F.logsigmoid(self.up(self.down(x))) / self.tau  # (B, N, H * Dk)
        return {"gk": gk.unflatten(-1, (self.heads, -1)).transpose(1, 2)}


class Mamba2Gate(nn.Module):
    """Mamba-2's step sizes and decay rates (Dao & Gu, "Transformers are SSMs"):
    ``dt = softplus(x W + dt_bias)`` per head and token, ``A = -exp(A_log)`` per head,
    with ``dt`` initialised in ``[1e-3, 1e-1]`` and ``A`` in ``[-16, -1]`` as in the paper's code;
    ``dt_limit=(lo, hi)`` clamps ``dt`` (the code's ``dt_limit``, no clamp by default)."""

    def __init__(self, dim: int, heads: int, dt_limit: tuple[float, float] = (0.0, float("inf"))):
        super().__init__()
        if not (isinstance(dt_limit, tuple) and len(dt_limit) == 2 and 0.0 <= dt_limit[0] < dt_limit[1]):
            raise ValueError(f"dt_limit must be a tuple (lo, hi) with 0 <= lo < hi, got {dt_limit!r}")
        self.dt_limit = dt_limit
        self.proj = nn.Linear(dim, heads, bias=False)
        dt = torch.exp(torch.rand(heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(heads).uniform_(1, 16)))
        self.dt_bias._no_weight_decay = self.A_log._no_weight_decay = True  # as mamba_ssm: no weight decay

    def forward(self, x, q, k, v) -> dict:
        dt = F.softplus(self.proj(x) + self.dt_bias).transpose(1, 2)  # (B, H, N)
        if self.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(*self.dt_limit)
        return {"dt": dt.to(q.dtype), "A": -torch.exp(self.A_log).to(q.dtype)}


class FocusScale(nn.Module):
    """FLatten's learned scale (Han et al., "FLatten Transformer"): ``softplus(s)`` per head and
    channel, dividing the ReLU features before focusing; returns ``focus_scale``."""

    def __init__(self, heads: int, head_dim: int):
        super().__init__()
        self.s = nn.Parameter(torch.zeros(heads, head_dim))

    def forward(self, x, q, k, v) -> dict:
        return {"focus_scale": F.softplus(self.s).to(q.dtype)}


class PerformerFeatures(nn.Module):
    """FAVOR+ random features (Choromanski et al., "Rethinking Attention with Performers")
    held as a buffer; :meth:`redraw` draws new ones, as the paper does periodically in training."""

    def __init__(self, head_dim: int, num_features: int | None = None, seed: int = 0):
        super().__init__()
        from ...families.performer import default_feature_count, draw_features

        self.head_dim = head_dim
        self.num_features = num_features or default_feature_count(head_dim)
        self.register_buffer("features", draw_features(self.num_features, head_dim, seed))

    def redraw(self, seed: int) -> None:
        from ...families.performer import draw_features

        self.features.copy_(draw_features(self.num_features, self.head_dim, seed))

    def forward(self, x, q, k, v) -> dict:
        return {"features": self.features.to(q.dtype)}
