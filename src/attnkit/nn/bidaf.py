"""BiDAF's attention flow layer, from Seo et al., "Bidirectional Attention Flow for Machine
Comprehension" (2017), section 2.4.

For context vectors ``h_t`` (``T`` of them) and query vectors ``u_j`` (``J``):

    S_tj  = w^T [h_t; u_j; h_t o u_j]                          similarity, w in R^{6d} for 2d-wide vectors
    a_t   = softmax_j(S_t:),   u~_t = sum_j a_tj u_j            context-to-query
    b     = softmax_t(max_j S_tj),  h~ = sum_t b_t h_t          query-to-context, tiled over t
    g_t   = [h_t; u~_t; h_t o u~_t; h_t o h~]                   the query-aware context, 4 x wide

Nothing is summarised early: every context position keeps its own attended vector.
"""
from __future__ import annotations

import torch
from torch import nn

from ..families.luong import masked_softmax
from ..validation import check_int, check_tokens
from .dropout import check_dropout, drop_weights
from .factory import factory_kwargs


@factory_kwargs
class BiDAFAttention(nn.Module):
    """``forward(context, query, context_mask=None, query_mask=None) -> (G, S)``.

    ``context (B, T, dim)``, ``query (B, J, dim)``, masks boolean ``(B, T)`` / ``(B, J)`` (True = a real
    token). ``G (B, T, 4 dim)`` (zeros at padded context positions' attended parts), ``S (B, T, J)``.
    ``dropout``: dropout on the attention weights while training (:mod:`attnkit.nn.dropout`), on ``a`` and ``b``.
    """

    def __init__(self, dim: int, *, dropout: float = 0.0):
        super().__init__()
        check_int("dim", dim)
        self.dropout = check_dropout(dropout)
        self.dim = dim
        self.w = nn.Parameter(torch.randn(3 * dim) * (3 * dim) ** -0.5)

    def similarity(self, context: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``S_tj`` without the ``(T, J, 3 dim)`` concatenation: ``w_h . h_t + w_u . u_j + (h_t o w_hu) . u_j``."""
        w_h, w_u, w_hu = self.w.split(self.dim)
        return (context @ w_h).unsqueeze(-1) + (query @ w_u).unsqueeze(-2) + (context * w_hu) @ query.transpose(1, 2)

    def forward(self, context, query, context_mask=None, query_mask=None):
        check_tokens("context", context, self.dim)
        check_tokens("query", query, self.dim)
        B, T, J = context.shape[0], context.shape[1], query.shape[1]
        if query.shape[0] != B:
            raise ValueError(f"query has batch {query.shape[0]} but context has {B}")
        for name, m, n in (("context_mask", context_mask, T), ("query_mask", query_mask, J)):
            if m is not None and (m.dtype != torch.bool or m.shape != (B, n)):
                raise ValueError(f"{name} must be a boolean tensor of shape {(B, n)}")
        cm = context_mask if context_mask is not None else context.new_ones(B, T, dtype=torch.bool)
        qm = query_mask if query_mask is not None else query.new_ones(B, J, dtype=torch.bool)
        S = self.similarity(context, query)
        a = masked_softmax(S, qm[:, None, :] & cm[:, :, None])
        u_tilde = drop_weights(self, a) @ query
        row_max = S.masked_fill(~qm[:, None, :], float("-inf")).amax(-1)
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        b = masked_softmax(row_max, cm & qm.any(-1, keepdim=True))
        h_tilde = (drop_weights(self, b).unsqueeze(1) @ context).expand(B, T, self.dim)
        return torch.cat([context, u_tilde, context * u_tilde, context * h_tilde], dim=-1), S
