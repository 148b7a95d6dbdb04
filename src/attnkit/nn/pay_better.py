"""Optimised, Efficient and Super Attention: multi-head attention with fewer learned projections.

Hosseini & Hosseini, "You Need to Pay Better Attention: Rethinking the Mathematics of Attention
Mechanism" (2024). Multi-head attention projects the input ``X (N, dim)`` to each head's values
``X W_V^i`` (and keys ``X W_K^i``) of size ``h = dim / n``; a slice of ``X`` of the same size
carries as much as a learned map to that size, so the paper replaces the projections by slices
``X^i = X[:, i h : (i + 1) h]``::

    standard:   head_i = softmax(X W_Q^i (X W_K^i)^T / sqrt(h)) X W_V^i       W_Q, W_K, W_V, W_O: 4 dim^2
    Optimised:  head_i = softmax(X W_Q^i (X W_K^i)^T / sqrt(h)) X^i           W_Q, W_K, W_O:      3 dim^2
    Efficient:  head_i = softmax(X W_Q^i (X^i)^T / sqrt(h)) X^i               W_Q, W_O:           2 dim^2
    Super:      head_i = softmax(X W_Q^i (X^i)^T / sqrt(h)) (W_A X)^i         W_Q, W_O, W_A:      2 dim^2 + L^2

``out = concat_i(head_i) W_O`` in every variant. Super Attention's alignment matrix ``W_A (L, L)``
is shared by the heads and mixes the values along the sequence, so its layer has a fixed length
``seq_len = L``, and a causal layer keeps its lower triangle only (the paper's masked form).
Initialisation, which the paper leaves to its code: ``W_A`` starts at the identity (Super starts
as Efficient Attention).

:class:`PayBetterAttention` is :class:`~attnkit.nn.Attention` with the dropped projections
replaced by the identity (splitting into heads is the slicing): the softmax mechanism by default,
any mechanism, GQA with ``kv_heads * head_dim == dim``. Optimised and Efficient decode
incrementally as the base layer does; Super runs one-shot self-attention over at most ``seq_len``
tokens (its values depend on the whole sequence through ``W_A``).
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .factory import factory_kwargs
from ..validation import check_int

VARIANTS = ("optimised", "efficient", "super")


@factory_kwargs
class PayBetterAttention(Attention):
    """``variant``: ``"optimised"`` (no W_V), ``"efficient"`` (no W_V, W_K) or ``"super"`` (no W_V, W_K; a
    learned ``(seq_len, seq_len)`` W_A mixes the values, lower-triangular when ``causal``); the other
    arguments are :class:`~attnkit.nn.Attention`'s."""

    def __init__(self, dim: int, heads: int, *, variant: str = "optimised", seq_len: int | None = None,
                 causal: bool = False, **kwargs):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")
        if variant == "super":
            check_int("seq_len", seq_len)
        elif seq_len is not None or causal:
            raise ValueError(f"seq_len and causal shape Super Attention's alignment matrix; variant {variant!r} "
                             f"takes neither (causal is chosen per call)")
        super().__init__(dim, heads, **kwargs)
        if self.kv_heads * self.head_dim != self.context_dim:
            raise ValueError(f"{variant} attention slices the input into kv_heads={self.kv_heads} slices of "
                             f"head_dim={self.head_dim}; they must cover its {self.context_dim} features exactly")
        self.variant, self.causal = variant, causal
        self.v_proj = nn.Identity()
        if variant != "optimised":
            self.k_proj = nn.Identity()
        self.alignment = nn.Parameter(torch.eye(seq_len)) if variant == "super" else None

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.alignment is None:
            return super().project_kv(context)
        n = context.shape[1]
        mix = self.alignment[:n, :n]
        if self.causal:
            mix = mix.tril()
        k = self.split_heads(context, self.kv_heads)
        if self.k_norm is not None:
            k = self.k_norm(k)
        return k, self.split_heads(mix @ context, self.kv_heads)

    def forward(self, x, context=None, *, causal=False, mask=None, state=None, return_state=False):
        if self.alignment is not None:
            if context is not None or state is not None or return_state:
                raise ValueError("super attention runs one-shot self-attention: its values mix the whole sequence "
                                 "through W_A, so context, state and return_state are not supported")
            if x.ndim == 3 and x.shape[1] > self.alignment.shape[0]:
                raise ValueError(f"x has {x.shape[1]} tokens but this super attention layer was built for "
                                 f"seq_len={self.alignment.shape[0]}")
            if causal != self.causal:
                raise ValueError(f"this super attention layer was built with causal={self.causal} (its W_A is "
                                 f"{'lower-triangular' if self.causal else 'full'}); call it with the same causal")
        return super().forward(x, context, causal=causal, mask=mask, state=state, return_state=return_state)

    def extra_repr(self) -> str:
        extra = f", seq_len={self.alignment.shape[0]}, causal={self.causal}" if self.alignment is not None else ""
        return f"{super().extra_repr()}, variant={self.variant!r}{extra}"
