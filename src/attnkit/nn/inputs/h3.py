"""The learned filters of H3 (the input module of ``h3``).

Fu, Dao et al., "Hungry Hungry Hippos": the shift SSM starts as the identity on the current key
(``s = (1, 0, ..., 0)``, so learning decides how far back to look) and the diagonal SSM's decays
are spread across a head's channels, ``a_c = exp(-exp(u_c))`` with ``u_c`` from ``log 0.001`` to
``log 0.5`` (memories from about 1,000 tokens down to a few).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...families.h3 import SHIFT


class H3Filters(nn.Module):
    def __init__(self, heads: int, head_dim: int, shift: int = SHIFT):
        super().__init__()
        start = torch.zeros(heads, shift, head_dim)
        start[:, 0] = 1.0
        self.shift = nn.Parameter(start)
        self.log_rate = nn.Parameter(torch.linspace(math.log(1e-3), math.log(0.5), head_dim).repeat(heads, 1))

    def forward(self, x, q, k, v) -> dict:
        return {"shift": self.shift.to(q.dtype), "log_decay": -torch.exp(self.log_rate).to(q.dtype)}
