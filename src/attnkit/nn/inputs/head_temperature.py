"""The per-head temperatures of ``head_temperature`` ("Length Generalization of Causal Transformers
without Position Encoding"): ``lambda_h = exp(t_h)``, starting at 1. Freeze the rest of a trained
model and tune (or grid-search) only these to extend a NoPE model's context, as the paper does."""
from __future__ import annotations

import torch
from torch import nn


class HeadTemperature(nn.Module):
    def __init__(self, heads: int):
        super().__init__()
        self.log_temperature = nn.Parameter(torch.zeros(heads))

    def forward(self, x, q, k, v) -> dict:
        return {"temperature": self.log_temperature.exp().to(q.dtype)}
