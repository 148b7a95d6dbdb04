"""Relational attention (the relational heads of the Dual Attention Transformer).

Altabaa & Lafferty, "Disentangling and Integrating Relational and Sensory Information in
Transformer Architectures" (2024). A relational head sends from object ``j`` to object ``i`` the
relation between them tagged with the sender's *symbol*, not the sender's features:

    RA(x_i, (x_1..x_n)) = sum_j alpha_ij (r(x_i, x_j) W_r + s_j W_s)
    alpha_i = softmax_j(<phi^attn_q(x_i), phi^attn_k(x_j)> * scale)          per head
    r(x_i, x_j) = (<phi^rel_{q,l}(x_i), phi^rel_{k,l}(x_j)>)_{l = 1..d_r}       d_r relations
    s_j = S_lib[j]                                                          positional symbols

The feature maps are linear; ``S_lib`` is a learned library of ``max_len`` symbols, one per
absolute position (the paper's positional symbol retriever; its relative-position and feature-class
retrievers are not here). Since ``r_ij`` is a sum of per-relation inner products, ``sum_j alpha_ij
r_ij`` is ``phi^rel_{q,l}(x_i) . sum_j alpha_ij phi^rel_{k,l}(x_j)``: one softmax attention whose
values are the relation keys and the symbols gives both terms, and no ``(n, n, d_r)`` tensor is
formed. Readings: the ``d_r`` relations are shared by the heads (each head weighs them with its own
``alpha`` and has its own ``W_r``, ``W_s``), and their inner products are not scaled. The Dual
Attention layer is standard heads beside these, e.g. an ``nn.Attention`` on the same input with
the two outputs concatenated.
"""
from __future__ import annotations

import torch
from torch import nn

from ..api import attention
from ..validation import check_int, check_tokens
from .factory import factory_kwargs


@factory_kwargs
class RelationalAttention(nn.Module):
    """``(B, N, dim) -> (B, N, dim)`` relational heads; see the module docstring. No ``dropout=``:
    the softmax runs inside ``attnkit.attention`` over relation keys and symbols, whose weights the
    paper does not drop."""

    paper = "Disentangling and Integrating Relational and Sensory Information in Transformer Architectures"

    def __init__(self, dim: int, heads: int, relations: int, *, max_len: int, rel_dim: int | None = None):
        super().__init__()
        for name, value in (("dim", dim), ("heads", heads), ("relations", relations), ("max_len", max_len)):
            check_int(name, value)
        if dim % heads:
            raise ValueError(f"dim={dim} must be a multiple of heads={heads}")
        self.dim, self.heads, self.head_dim, self.relations = dim, heads, dim // heads, relations
        self.rel_dim = self.head_dim if rel_dim is None else rel_dim
        check_int("rel_dim", self.rel_dim)
        self.max_len = max_len
        self.q_attn, self.k_attn = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.q_rel = nn.Linear(dim, relations * self.rel_dim, bias=False)
        self.k_rel = nn.Linear(dim, relations * self.rel_dim, bias=False)
        self.symbols = nn.Parameter(torch.randn(max_len, dim) * dim ** -0.5)  # S_lib
        self.w_r = nn.Parameter(torch.randn(heads, relations, self.head_dim) * relations ** -0.5)
        self.w_s = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
        check_tokens("x", x, self.dim)
        B, N, _ = x.shape
        if N > self.max_len:
            raise ValueError(f"x has {N} tokens but the symbol library holds max_len={self.max_len} positions")
        H, D, R, E = self.heads, self.head_dim, self.relations, self.rel_dim
        q, k = (t.view(B, N, H, D).transpose(1, 2) for t in (self.q_attn(x), self.k_attn(x)))
        rel_keys = self.k_rel(x)[:, None].expand(B, H, N, R * E)  # phi^rel_k, the same for every head
        symbols = self.w_s(self.symbols[:N]).view(N, H, D).transpose(0, 1)[None].expand(B, H, N, D)  # s_j W_s
        mixed = attention(q, k, torch.cat([rel_keys, symbols], -1), "softmax", causal=causal)
        rel_agg, sym = mixed.split([R * E, D], dim=-1)
        rel_q = self.q_rel(x).view(B, 1, N, R, E)
        r = (rel_agg.view(B, H, N, R, E) * rel_q).sum(-1)  # sum_j alpha_ij r_ij, (B, H, N, R)
        heads = r @ self.w_r + sym  # (B, H, N, D)
        return self.out(heads.transpose(1, 2).reshape(B, N, self.dim))
