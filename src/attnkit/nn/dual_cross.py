"""Dual cross-attention, from Zhu et al., "Dual Cross-Attention Learning for Fine-Grained Visual
Categorization and Object Re-Identification" (2022), section 3.

- Attention rollout (eq. 2, after Abnar & Zuidema): ``S^_i = S-_i S-_{i-1} ... S-_1`` with
  ``S- = 0.5 S + 0.5 E`` (the identity for the residual path), heads averaged.
- Global-local cross-attention (GLCA, eq. 3): the ``R`` query vectors whose tokens get the highest
  accumulated weight in the class token's row of ``S^`` form ``Q^l``, and
  ``f_GLCA(Q^l, K^g, V^g) = softmax(Q^l K^g^T / sqrt(d)) V^g`` against every token. The class token
  itself is kept as the first local query (the GLCA branch's class token is what the paper
  classifies with); the ``R = ceil(ratio * N)`` others are chosen among the ``N`` patch tokens.
- Pair-wise cross-attention (PWCA, eq. 4): the queries of image 1 attend to the keys and values of
  both images, ``softmax(Q_1 [K_1; K_2]^T / sqrt(d)) [V_1; V_2]``, one softmax over ``2N + 2`` keys.
  It is a training-time regulariser sharing the self-attention weights: in ``eval()`` mode, or
  without a distractor image, the layer is plain self-attention.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..api import attention
from ..validation import check_divides, check_float, check_int, check_tokens
from .dropout import check_dropout, dropout_p
from .factory import factory_kwargs


def attention_rollout(weights: list[torch.Tensor]) -> torch.Tensor:
    """``S^`` of eq. 2 from the blocks' attention weights ``(B, H, N, N)``, first block first: ``(B, N, N)``."""
    if not weights or any(not isinstance(w, torch.Tensor) or w.ndim != 4 or w.shape[-1] != w.shape[-2]
                          for w in weights):
        raise ValueError("weights must be a non-empty list of (batch, heads, N, N) attention weights")
    eye = torch.eye(weights[0].shape[-1], dtype=weights[0].dtype, device=weights[0].device)
    rollout = None
    for w in weights:
        s_bar = 0.5 * w.mean(dim=1) + 0.5 * eye
        rollout = s_bar if rollout is None else s_bar @ rollout
    return rollout


class _Heads(nn.Module):
    def __init__(self, dim: int, heads: int, *, dropout: float = 0.0):
        super().__init__()
        self.dropout = check_dropout(dropout)
        check_int("dim", dim)
        check_int("heads", heads)
        check_divides("dim", dim, "heads", heads)
        self.dim, self.heads = dim, heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def split(self, x):
        B, N, _ = x.shape
        return self.qkv(x).view(B, N, 3, self.heads, self.dim // self.heads).permute(2, 0, 3, 1, 4)

    def merge(self, out):
        B, H, N, Dh = out.shape
        return self.proj(out.transpose(1, 2).reshape(B, N, H * Dh))


@factory_kwargs
class GlobalLocalCrossAttention(_Heads):
    """GLCA: ``forward(x, rollout) -> (out, chosen)`` for tokens ``x (B, 1 + N, dim)`` (class token first)
    and the rollout ``(B, 1 + N, 1 + N)``; ``out (B, 1 + R, dim)``, ``chosen (B, 1 + R)`` the token indices
    of the local queries (0 = the class token). ``dropout``: dropout on the attention weights while training (:mod:`attnkit.nn.dropout`)."""

    def __init__(self, dim: int, heads: int, *, ratio: float = 0.1, dropout: float = 0.0):
        super().__init__(dim, heads, dropout=dropout)
        check_float("ratio", ratio, positive=True)
        if ratio > 1:
            raise ValueError(f"ratio must be in (0, 1] (the share of patch tokens kept as queries), got {ratio}")
        self.ratio = ratio

    def forward(self, x, rollout):
        check_tokens("x", x, self.dim)
        B, T = x.shape[:2]
        if T < 2:
            raise ValueError(f"x must hold the class token and at least one patch token, got {T} token(s)")
        if not isinstance(rollout, torch.Tensor) or rollout.shape != (B, T, T):
            raise ValueError(f"rollout must be a tensor of shape {(B, T, T)} (attention_rollout of the blocks)")
        R = math.ceil(self.ratio * (T - 1))
        top = rollout[:, 0, 1:].topk(R, dim=-1).indices + 1
        chosen = torch.cat([top.new_zeros(B, 1), top], dim=1)
        q, k, v = self.split(x)
        q_local = q.gather(2, chosen[:, None, :, None].expand(-1, self.heads, -1, q.shape[-1]))
        return self.merge(attention(q_local, k, v, "softmax", dropout_p=dropout_p(self))), chosen


@factory_kwargs
class PairwiseCrossAttention(_Heads):
    """PWCA: ``forward(x, distractor=None) -> (B, N, dim)``; with a distractor ``(B, N', dim)`` in training
    mode, each query of ``x`` attends to the keys and values of both. ``dropout``: dropout on the attention weights while training (:mod:`attnkit.nn.dropout`)."""

    def forward(self, x, distractor=None):
        check_tokens("x", x, self.dim)
        q, k, v = self.split(x)
        if distractor is not None and self.training:
            check_tokens("distractor", distractor, self.dim)
            if distractor.shape[0] != x.shape[0]:
                raise ValueError(f"distractor has batch {distractor.shape[0]} but x has {x.shape[0]}")
            _, k2, v2 = self.split(distractor)
            k, v = torch.cat([k, k2], dim=2), torch.cat([v, v2], dim=2)
        return self.merge(attention(q, k, v, "softmax", dropout_p=dropout_p(self)))
