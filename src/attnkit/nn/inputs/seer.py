"""SeerAttention's AttnGate inside a layer (the input module of ``seer_attention``).

Gao et al., "SeerAttention: Learning Intrinsic Sparse Attention in Your LLMs":
one learned linear map per head for the average-pooled queries, ``W_q (D, d_gate)``,
and one for the max-, min- and average-pooled keys, ``W_k (3 D, d_gate)``. The
block mask they produce is not differentiable: the gate is trained by
self-distillation (:func:`attnkit.training.seer.distill_gates`, ``attnkit train seer``).
"""
from __future__ import annotations

import math

import torch
from torch import nn


class SeerGate(nn.Module):
    def __init__(self, heads: int, head_dim: int, gate_dim: int | None = None):
        super().__init__()
        width = gate_dim or head_dim
        self.gate_q = nn.Parameter(torch.randn(heads, head_dim, width) / math.sqrt(head_dim))
        self.gate_k = nn.Parameter(torch.randn(heads, 3 * head_dim, width) / math.sqrt(3 * head_dim))

    def forward(self, x, q, k, v) -> dict:
        return {"gate_q": self.gate_q.to(q.dtype), "gate_k": self.gate_k.to(q.dtype)}
