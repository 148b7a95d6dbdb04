"""PaTH attention's Householder directions, strengths and optional forget gate (the input module of ``path``).

Yang et al., "PaTH Attention: Position Encoding via Accumulating Householder Transformations":
``w_t = normalise(x_t W_down W_up)`` per head (a low-rank projection; the paper adds a short
convolution before the normalisation, which needs earlier tokens and belongs to a block),
``beta_t = 2 sigmoid(x_t W_beta)`` in ``(0, 2)``, and with ``forget_gate=True`` PaTH-FoX's
``g_t = logsigmoid(x_t W_f + b_f)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PaTHInputs(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, rank: int = 32, forget_gate: bool = False):
        super().__init__()
        self.heads = heads
        self.direction = nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, heads * head_dim, bias=False))
        self.strength = nn.Linear(dim, heads, bias=True)
        self.forget = nn.Linear(dim, heads, bias=True) if forget_gate else None
        if self.forget is not None:
            nn.init.constant_(self.forget.bias, 3.0)  # start near no forgetting, as FoX does

    def forward(self, x, q, k, v) -> dict:
        w = F.normalize(self.direction(x).unflatten(-1, (self.heads, -1)).transpose(1, 2), dim=-1)
        out = {"w": w.to(q.dtype), "beta": (2 * torch.sigmoid(self.strength(x))).transpose(1, 2).to(q.dtype)}
        if self.forget is not None:
            out["g"] = F.logsigmoid(self.forget(x)).transpose(1, 2).to(q.dtype)
        return out
