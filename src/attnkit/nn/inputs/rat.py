"""The layer computing RAT's forget gate from hidden states (the input module of ``rat``).

Wei et al., "RAT: Bridging RNN Efficiency and Attention Accuracy in Language
Modeling": ``g = sigmoid(W x + b)`` per channel, with ``b = log(u)``,
``u ~ U(1, L - 1)``, so that the recurrence starts out remembering across its chunk.
"""
from __future__ import annotations

import torch
from torch import nn


class RATGate(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, chunk_size: int = 16):
        super().__init__()
        self.heads = heads
        self.proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.bias = nn.Parameter(torch.empty(heads * head_dim).uniform_(1, max(chunk_size - 1, 1)).log())

    def forward(self, x, q, k, v) -> dict:
        g = torch.sigmoid(self.proj(x) + self.bias)  # (B, N, H * D)
        return {"g": g.unflatten(-1, (self.heads, -1)).transpose(1, 2).to(q.dtype)}
