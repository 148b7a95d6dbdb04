"""RetNet's multi-scale retention (MSR) layer.

Sun et al., "Retentive Network: A Successor to Transformer for Large Language
Models" (2023), section 2.2::

    gamma = 1 - 2^(-5 - arange(0, h))                    one decay per head
    head_i = Retention(X, gamma_i)                        the "retention" mechanism
    Y = GroupNorm_h(Concat(head_1, ..., head_h))          each head normalised on its own
    MSR(X) = (swish(X W_G) * Y) W_O

Queries and keys are rotated (the paper's ``Theta``, ``e^{i n theta}``: RoPE,
``rope=True`` by default); the decays are the mechanism's. GroupNorm normalises
each head of each token separately, so the parallel, chunked and recurrent
(decoding) paths stay one function; it also makes the paper's score
normalisations (``1/sqrt(d)``, decay-row sums) redundant up to its ``eps``.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .attention import Attention
from .factory import factory_kwargs


@factory_kwargs
class MultiScaleRetention(Attention):
    """``forward(x, causal=True, state=, return_state=)`` as :class:`attnkit.nn.Attention` (self-attention only).

    No ``dropout=``: retention's decayed weights are never formed by its chunked and recurrent forms,
    so there are none to drop.
    """

    paper = "Retentive Network: A Successor to Transformer for Large Language Models"

    def __init__(self, dim: int, heads: int, *, head_dim: int | None = None, rope=True, chunk_size: int = 64,
                 eps: float = 1e-5):
        super().__init__(dim, heads, mechanism="retention", head_dim=head_dim, rope=rope, chunk_size=chunk_size)
        self.group_norm = nn.GroupNorm(heads, heads * self.head_dim, eps=eps)
        self.gate = nn.Linear(dim, heads * self.head_dim, bias=False)

    def forward(self, x, context=None, *, causal=True, mask=None, state=None, return_state=False):
        if context is not None or not causal:
            raise ValueError("multi-scale retention is causal self-attention: pass causal=True and no context")
        return super().forward(x, causal=True, mask=mask, state=state, return_state=return_state)

    def merge_heads(self, out, x):
        """GroupNorm over heads, then the swish gate and ``W_O``."""
        if self.head_mask is not None:
            out = out * self.head_mask.to(out.dtype)[None, :, None, None]
        y = out.transpose(1, 2).flatten(2)  # (B, N, heads * head_dim)
        y = self.group_norm(y.flatten(0, 1)).view_as(y)  # per token: each head's channels
        return self.out_proj(F.silu(self.gate(x)) * y)
