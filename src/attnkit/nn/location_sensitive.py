"""Location-sensitive attention, from Chorowski et al., "Attention-Based Models for Speech Recognition" (2015).

The alignment of step ``i`` sees where the previous step attended: ``k`` filters
``F`` of width ``r`` convolve the previous weights ``a_{i-1}`` (eq. 8) and the
result joins the additive score (eq. 9),

    f_i  = F * a_{i-1}
    e_ij = w^T tanh(W s_{i-1} + V h_j + U f_ij + b)
    a_ij = exp(beta e_ij) / sum_j exp(beta e_ij)          (beta > 1 sharpens, section 2.3)
    a_ij = sigmoid(e_ij) / sum_j sigmoid(e_ij)            (smoothing, section 2.3)
    g_i  = sum_j a_ij h_j.

One call is one decoder step, so the op is recurrent in the weights it returns:
feed them back as ``previous_weights`` of the next step.
"""
from __future__ import annotations

import torch
from torch import nn

from ..families.luong import masked_softmax
from ..validation import check_float, check_int, check_tokens
from .dropout import check_dropout, drop_weights
from .factory import factory_kwargs


@factory_kwargs
class LocationSensitiveAttention(nn.Module):
    """One step: ``forward(state, keys, previous_weights, mask=None) -> (context, weights)``.

    ``state (B, query_dim)`` is ``s_{i-1}``, ``keys (B, N, key_dim)`` the encoder states ``h``,
    ``previous_weights (B, N)`` the last step's weights (zeros, or a one-hot on the first frame,
    before the first step), ``mask (B, N)`` boolean (True = a real frame). Returns the glimpse
    ``(B, key_dim)`` and the weights ``(B, N)``; a row with no frame is zeros. ``dropout``: dropout on the attention weights while training (:mod:`attnkit.nn.dropout`),
    on the weights the glimpse is made from; the returned weights (the next step's ``previous_weights``)
    are not dropped.
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int, *, filters: int = 10, kernel_size: int = 201,
                 sharpening: float = 1.0, smoothing: bool = False, dropout: float = 0.0):
        super().__init__()
        self.dropout = check_dropout(dropout)
        for name, value in (("query_dim", query_dim), ("key_dim", key_dim), ("attn_dim", attn_dim),
                            ("filters", filters), ("kernel_size", kernel_size)):
            check_int(name, value)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (a window centred on each frame), got {kernel_size}")
        check_float("sharpening", sharpening, positive=True)
        self.query_dim, self.key_dim, self.sharpening, self.smoothing = query_dim, key_dim, sharpening, smoothing
        self.conv = nn.Conv1d(1, filters, kernel_size, padding=kernel_size // 2, bias=False)  # F
        self.W = nn.Linear(query_dim, attn_dim, bias=False)
        self.V = nn.Linear(key_dim, attn_dim, bias=False)
        self.U = nn.Linear(filters, attn_dim, bias=False)
        self.b = nn.Parameter(torch.zeros(attn_dim))
        self.w = nn.Parameter(torch.randn(attn_dim) * attn_dim ** -0.5)

    def energies(self, state: torch.Tensor, keys: torch.Tensor, previous_weights: torch.Tensor) -> torch.Tensor:
        """``e_ij`` for every frame: ``(B, N)``."""
        f = self.conv(previous_weights.unsqueeze(1)).transpose(1, 2)  # (B, N, filters)
        hidden = torch.tanh(self.W(state).unsqueeze(1) + self.V(keys) + self.U(f) + self.b)
        return hidden @ self.w

    def forward(self, state, keys, previous_weights, mask=None):
        check_tokens("keys", keys, self.key_dim)
        B, N = keys.shape[:2]
        if not isinstance(state, torch.Tensor) or state.shape != (B, self.query_dim):
            raise ValueError(f"state must be a tensor of shape {(B, self.query_dim)}, got "
                             f"{tuple(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__}")
        if not isinstance(previous_weights, torch.Tensor) or previous_weights.shape != (B, N):
            raise ValueError(f"previous_weights must be a tensor of shape {(B, N)} (the last step's weights)")
        if mask is not None and (mask.dtype != torch.bool or mask.shape != (B, N)):
            raise ValueError(f"mask must be a boolean tensor of shape {(B, N)}")
        e = self.energies(state, keys, previous_weights)
        allowed = torch.ones_like(e, dtype=torch.bool) if mask is None else mask
        if self.smoothing:
            p = torch.sigmoid(e) * allowed
            total = p.sum(-1, keepdim=True)
            weights = p / torch.where(total > 0, total, torch.ones_like(total))
        else:
            weights = masked_softmax(self.sharpening * e, allowed)
        return (drop_weights(self, weights).unsqueeze(1) @ keys).squeeze(1), weights
