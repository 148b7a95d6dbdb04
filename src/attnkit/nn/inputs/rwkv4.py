"""The learned decays and bonuses of RWKV-4's WKV (the input module of ``rwkv4``).

Peng et al., "RWKV: Reinventing RNNs for the Transformer Era": per channel, ``w = exp(time_decay)``
and ``u = time_first``. Initialised as the authors describe: decays spread from slow to fast across
a head's channels, ``time_decay_c = -5 + 8 (c / (D - 1))^0.7``, and ``u = log 0.3``.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class RWKV4Decay(nn.Module):
    def __init__(self, heads: int, head_dim: int):
        super().__init__()
        ramp = torch.arange(head_dim) / max(head_dim - 1, 1)
        self.time_decay = nn.Parameter((-5 + 8 * ramp ** 0.7).repeat(heads, 1))
        self.time_first = nn.Parameter(torch.full((heads, head_dim), math.log(0.3)))

    def forward(self, x, q, k, v) -> dict:
        return {"w": torch.exp(self.time_decay).to(q.dtype), "u": self.time_first.to(q.dtype)}
