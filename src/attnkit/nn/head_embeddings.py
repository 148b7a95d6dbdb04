"""MHE: multi-head attention from one shared projection and one learned embedding per head.

Xue & Aletras, "Pit One Against Many: Leveraging Attention-head Embeddings for Parameter-efficient
Multi-head Attention" (2023). Instead of a projection per head, queries, keys and values each
have one projection ``W (dim, d)`` shared by the ``n`` heads, and head ``i`` is made from it by a
head embedding ``e_i`` of size ``d`` (inspired by position embeddings)::

    MHE-ADD:  Q_i = X W_Q + e^Q_i          MHE-MUL:  Q_i = (X W_Q) * e^Q_i      (same for K, V)
    head_i    = attention(Q_i, K_i, V_i);   out = concat_i(head_i) W_O

so the heads cost ``3 n d`` parameters beyond single-head attention's ``3 dim d``, where
multi-head attention's per-head projections cost ``3 n dim d`` (with ``dim = n d``:
``(3n^2 - 3n) d^2`` beyond single-head attention). Initialisation, which the paper leaves to its
code: ADD embeddings from N(0, 0.02^2), MUL embeddings from N(1, 0.02^2) (each head starts near
the shared projection and its output projection slice breaks the symmetry).

:class:`HeadEmbeddingAttention` is :class:`~attnkit.nn.Attention` with these projections: every
mechanism, GQA (kv heads get their own embeddings), RoPE, cross-attention and incremental
decoding work as there.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .factory import factory_kwargs


class HeadEmbeddingProjection(nn.Module):
    """``x (.., in_dim) -> (.., heads * head_dim)``: one shared projection, then each head's embedding added
    (``mode="add"``) or multiplied in (``"mul"``)."""

    def __init__(self, in_dim: int, heads: int, head_dim: int, mode: str, bias: bool):
        super().__init__()
        self.mode = mode
        self.weight = nn.Parameter(torch.empty(head_dim, in_dim))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Linear's initialisation
        self.bias = nn.Parameter(torch.zeros(head_dim)) if bias else None
        self.embeddings = nn.Parameter(torch.randn(heads, head_dim) * 0.02 + (1.0 if mode == "mul" else 0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = nn.functional.linear(x, self.weight, self.bias)[..., None, :]  # (.., 1, head_dim)
        heads = shared + self.embeddings if self.mode == "add" else shared * self.embeddings
        return heads.flatten(-2)


@factory_kwargs
class HeadEmbeddingAttention(Attention):
    """Attention whose q, k, v projections are shared by the heads and told apart by head embeddings.

    ``mode``: ``"mul"`` (MHE-MUL) or ``"add"`` (MHE-ADD); the other arguments are
    :class:`~attnkit.nn.Attention`'s.
    """

    def __init__(self, dim: int, heads: int, *, mode: str = "mul", **kwargs):
        if mode not in ("add", "mul"):
            raise ValueError(f"mode must be 'add' or 'mul', got {mode!r}")
        super().__init__(dim, heads, **kwargs)
        bias = self.out_proj.bias is not None
        self.mode = mode
        self.q_proj = HeadEmbeddingProjection(dim, heads, self.head_dim, mode, bias)
        self.k_proj = HeadEmbeddingProjection(self.context_dim, self.kv_heads, self.head_dim, mode, bias)
        self.v_proj = HeadEmbeddingProjection(self.context_dim, self.kv_heads, self.head_dim, mode, bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode!r}"
