"""The key scores of Dynamic Mask Attention inside a layer (the input module of ``dma``).

Shi et al., "Trainable Dynamic Mask Sparse Attention", as the authors' code
computes it: the values of all kv heads, concatenated per token, go through one
linear map to one number per kv head, ``delta = A * softplus(vec(v) W_delta)``
with ``A`` a learned per-kv-head factor, zero at the start (then every key
scores the same and DMA starts as a sliding window of its ``w`` latest keys).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DMAInputs(nn.Module):
    def __init__(self, kv_heads: int, head_dim: int):
        super().__init__()
        self.dt_proj = nn.Linear(kv_heads * head_dim, kv_heads, bias=False)
        self.A = nn.Parameter(torch.zeros(kv_heads))

    def forward(self, x, q, k, v) -> dict:
        B, Hkv, N, Dv = v.shape
        if Hkv * Dv != self.dt_proj.in_features:
            raise ValueError(f"dma's input module was built for kv_heads * head_dim = {self.dt_proj.in_features} "
                             f"values per token but got {Hkv} x {Dv}")
        dt = self.dt_proj(v.transpose(1, 2).reshape(B, N, Hkv * Dv).to(self.A.dtype))
        return {"bias": (self.A * F.softplus(dt)).transpose(1, 2).to(q.dtype)}  # (B, Hkv, N)
