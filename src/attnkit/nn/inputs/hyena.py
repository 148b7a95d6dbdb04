"""Hyena's implicit long filters (the input module of ``hyena``).

Poli et al., "Hyena Hierarchy", section 3.3: ``h[t] = Window(t) * FFN(PositionalEncoding(t))``.
The positional encoding of lag ``t`` is ``[t / L, cos(2 pi f t / L), sin(2 pi f t / L)]`` for
``f = 1 .. bands``; the FFN is two hidden layers with sine activations (a learned frequency,
as in the paper's ``Sin`` module); the window is an exponential decay ``exp(-alpha t / L)``
with ``alpha`` spread across channels, so some channels keep long memories and others short
ones. The filters cover ``max_len`` lags: a sequence (state included) may be that long.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class _Sin(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.freq = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return torch.sin(self.freq * x)


class HyenaFilter(nn.Module):
    def __init__(self, heads: int, head_dim: int, *, max_len: int = 2048, bands: int = 8, width: int = 64,
                 order: int = 2):
        super().__init__()
        self.heads, self.head_dim, self.max_len, self.order = heads, head_dim, max_len, order
        self.ffn = nn.Sequential(nn.Linear(1 + 2 * bands, width), _Sin(width), nn.Linear(width, width), _Sin(width),
                                 nn.Linear(width, order * heads * head_dim))
        self.register_buffer("bands", torch.arange(1, bands + 1, dtype=torch.float32), persistent=False)
        alpha = torch.linspace(math.log(1e-2), math.log(30.0), heads * head_dim).exp()  # slow ... fast decays
        self.register_buffer("alpha", alpha, persistent=False)

    def forward(self, x, q, k, v) -> dict:
        t = torch.arange(self.max_len, device=self.alpha.device, dtype=torch.float32) / self.max_len
        angle = 2 * math.pi * t[:, None] * self.bands
        features = torch.cat([t[:, None], torch.cos(angle), torch.sin(angle)], dim=-1)
        h = self.ffn(features) * torch.exp(-self.alpha * t[:, None]).repeat(1, self.order)  # (L, order H D)
        h = h.view(self.max_len, self.order, self.heads, self.head_dim).permute(1, 2, 0, 3)
        return {"filters": (h / self.max_len ** 0.5).to(q.dtype)}
