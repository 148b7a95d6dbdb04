"""The learned inputs of Native Sparse Attention inside a layer (the input module of ``nsa``).

Yuan et al., "Native Sparse Attention: Hardware-Aligned and Natively Trainable
Sparse Attention": the compression ``phi`` of keys and of values (an
intra-block position encoding added to each block of ``l`` tokens, then
``W2 relu(W1 vec(.))``, one MLP for keys and one for values, shared by all
heads), the branch gates ``g_t^c = sigmoid(W_g x_t)`` per head and branch
(compression, selection, window) from the layer input, and the compression and
window branches' own keys and values (``k_cmp, v_cmp, k_win, v_win``, linear maps
of the layer input): the paper gives each branch independent keys and values "to
prevent shortcut learning across attention branches"; the layer's ``k`` and ``v``
serve the selection branch.
``attnkit.nn.Attention(dim, heads, kv_heads=..., mechanism="nsa")`` learns them; its
compression block is twice the layer's ``compress_stride`` (the paper's ``l = 32, d = 16``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ... import registry


class NSAInputs(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, compress_block: int = 32, hidden: int | None = None,
                 kv_heads: int | None = None):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads or heads, head_dim
        # k_cmp, v_cmp, k_win, v_win from one map of the layer input
        self.branch_kv = nn.Linear(dim, 4 * self.kv_heads * head_dim)
        hidden = hidden or head_dim
        fan_in = compress_block * head_dim
        self.k_pos = nn.Parameter(torch.zeros(compress_block, head_dim))
        self.v_pos = nn.Parameter(torch.zeros(compress_block, head_dim))
        self.k_w1 = nn.Parameter(torch.randn(fan_in, hidden) / math.sqrt(fan_in))
        self.v_w1 = nn.Parameter(torch.randn(fan_in, hidden) / math.sqrt(fan_in))
        self.k_w2 = nn.Parameter(torch.randn(hidden, head_dim) / math.sqrt(hidden))
        self.v_w2 = nn.Parameter(torch.randn(hidden, head_dim) / math.sqrt(hidden))
        self.gate = nn.Linear(dim, heads * 3)

    @classmethod
    def for_layer(cls, dim: int, heads: int, head_dim: int, params: dict, kv_heads: int | None = None) -> "NSAInputs":
        """The module of a layer with NSA parameters ``params`` (defaults where left out): blocks of twice the
        stride."""
        stride = params.get("compress_stride", registry.get("nsa").params["compress_stride"].default)
        return cls(dim, heads, head_dim, compress_block=2 * stride, kv_heads=kv_heads)

    def forward(self, x, q, k, v) -> dict:
        gates = torch.sigmoid(self.gate(x)).unflatten(-1, (self.heads, 3)).transpose(1, 2)  # (B, H, N, 3)
        tensors = {n: getattr(self, n).to(q.dtype) for n in ("k_pos", "k_w1", "k_w2", "v_pos", "v_w1", "v_w2")}
        B, N = x.shape[:2]
        branch = self.branch_kv(x).view(B, N, 4, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4).to(q.dtype)
        tensors.update(zip(("k_cmp", "v_cmp", "k_win", "v_win"), branch.unbind(0)))
        return {"gates": gates.to(q.dtype), **tensors}
