"""The score network of Neural Attention inside a layer (the input module of ``neural_attention``).

DiGiugno & Mahmood, "Neural Attention: A Novel Mechanism for Enhanced Expressive Power in
Transformer Models": per head, q and k are projected down to ``d'`` dimensions, concatenated,
and scored by ``Linear(2d', d') -> ReLU -> Linear(d', d'/2) -> ReLU -> Linear(d'/2, 1)``. The
authors' code takes ``d' = head_dim / 32``; here ``d' = max(2, head_dim / 32)``. The
down-projections are folded into the first layer (one linear map), so this module learns
``w_q, w_k, b_1, w_2, b_2, w_3`` directly, initialised as ``nn.Linear`` initialises the
layers they stand for.
"""
from __future__ import annotations

import torch
from torch import nn


def _uniform(*shape, fan_in):
    bound = fan_in ** -0.5
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


class NeuralScoreMLP(nn.Module):
    def __init__(self, heads: int, head_dim: int):
        super().__init__()
        A = max(2, head_dim // 32)
        A2 = A // 2
        self.w_q, self.w_k = _uniform(heads, head_dim, A, fan_in=head_dim), _uniform(heads, head_dim, A, fan_in=head_dim)
        self.b_1 = _uniform(heads, A, fan_in=2 * A)
        self.w_2, self.b_2 = _uniform(heads, A, A2, fan_in=A), _uniform(heads, A2, fan_in=A)
        self.w_3 = _uniform(heads, A2, fan_in=A2)

    def forward(self, x, q, k, v) -> dict:
        return {name: getattr(self, name).to(q.dtype) for name in ("w_q", "w_k", "b_1", "w_2", "b_2", "w_3")}
