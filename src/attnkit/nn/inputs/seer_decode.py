"""SeerAttention-R's decode AttnGate inside a layer (the input module of ``seer_attention_r``).

Gao et al., "SeerAttention-R: Sparse Attention Adaptation for Long Reasoning": per kv
head, a linear map of its GQA group's concatenated queries ``W_q (g D, d_gate)`` and one
of each key block's max-, min- and mean-pooled keys ``W_k (3 D, d_gate)``. The layer
hands the gate its queries and keys before the layer's RoPE (the paper's ``Q_nope``,
``K_nope``): the gate applies a rotary embedding of its own. Trained by
self-distillation with the base model frozen (:mod:`attnkit.training.seer_decode`,
``attnkit train seer-r``); Xavier-uniform initialisation, as the authors' code.
"""
from __future__ import annotations

import torch
from torch import nn


class SeerDecodeGate(nn.Module):
    def __init__(self, heads: int, kv_heads: int, head_dim: int, gate_dim: int | None = None):
        super().__init__()
        width = gate_dim or head_dim
        group = heads // kv_heads
        self.gate_q = nn.Parameter(torch.empty(kv_heads, group * head_dim, width))
        self.gate_k = nn.Parameter(torch.empty(kv_heads, 3 * head_dim, width))
        for w in (self.gate_q, self.gate_k):
            bound = (6.0 / (w.shape[1] + w.shape[2])) ** 0.5
            nn.init.uniform_(w, -bound, bound)

    def forward(self, x, q, k, v) -> dict:
        return {"gate_q": self.gate_q.to(q.dtype), "gate_k": self.gate_k.to(q.dtype), "gate_queries": q,
                "gate_keys": k}
