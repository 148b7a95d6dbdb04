"""Aaren: the layer of "Attention as an RNN" (Feng et al., 2024) around the ``aaren`` mechanism.

Per head, a learned query token attends over every prefix of the keys and values
projected from the input; ``attnkit.attention(..., "aaren")`` computes it (forms:
``reference`` = materialised prefix softmax, ``chunked``, ``scan`` = log-depth
prefix scan, ``recurrent``; see :mod:`attnkit.families.aaren`). The query goes in
as ``q`` broadcast along the sequence, which is the paper's mechanism exactly.
Incremental use carries the constant-size ``(m, u, w)`` state.
"""
from __future__ import annotations

import torch
from torch import nn

from ..api import attention


class AarenLayer(nn.Module):
    """``x (B, N, dim) -> (B, N, dim)``: per head, a learned query attends over every prefix."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads, self.head_dim = heads, dim // heads
        self.query = nn.Parameter(torch.randn(heads, self.head_dim) / self.head_dim**0.5)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, state=None, return_state: bool = False, form: str | None = None):
        """``form`` picks a one-shot form of ``aaren``; with ``state`` / ``return_state`` the RNN step runs."""
        B, N, _ = x.shape
        k, v = self.to_kv(x).view(B, N, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, N, D) each
        q = self.query.to(k.dtype)[None, :, None, :].expand(B, -1, N, -1)
        if return_state or state is not None:
            o, state = attention(q, k, v, "aaren", causal=True, state=state, return_state=True)
        else:
            o = attention(q, k, v, "aaren", causal=True, form=form)
        y = self.out(o.transpose(1, 2).reshape(B, N, -1))
        return (y, state) if return_state else y
