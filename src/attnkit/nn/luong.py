"""Luong et al.'s attention layer: global or local attention with the dot, general or concat score.

Luong, Pham & Manning, "Effective Approaches to Attention-based Neural Machine
Translation" (2015), section 3 (the equations are in :mod:`attnkit.families.luong`).
For target states ``h_t`` and source states ``h_s`` the layer returns the
attentional hidden state ``h~_t = tanh(W_c [c_t; h_t])`` (eq. 5) and the weights
``a_t``:

- ``local=None``: global attention, ``a_t = softmax(score(h_t, h_s))`` over all
  source positions;
- ``local="monotonic"`` (local-m): the softmax over ``[t - D, t + D]``;
- ``local="predictive"`` (local-p): ``p_t = S sigmoid(v_p^T tanh(W_p h_t))`` (eq. 9)
  with ``S`` the source length, the softmax over ``[p_t - D, p_t + D]`` times
  ``exp(-(s - p_t)^2 / (2 sigma^2))``, ``sigma = D / 2`` (eq. 10).
"""
from __future__ import annotations

import torch
from torch import nn

from ..families.additive import additive_scores
from ..families.luong import local_p_weights, masked_softmax
from ..validation import check_int, check_tokens
from .dropout import check_dropout, drop_weights
from .factory import factory_kwargs

SCORES = ("dot", "general", "concat")
LOCAL = (None, "monotonic", "predictive")


@factory_kwargs
class LuongAttention(nn.Module):
    """Luong attention over source states; ``forward(target, source, source_mask=None) -> (h_tilde, weights)``.

    ``target (B, T, dim)``, ``source (B, S, dim)``, ``source_mask (B, S)`` boolean (True = a real
    source position). ``weights`` is ``(B, T, S)``; a row with no source position is zeros. ``dropout``:
    dropout on the attention weights while training (:mod:`attnkit.nn.dropout`), on the weights the context is made from (the returned weights are not dropped).
    """

    def __init__(self, dim: int, *, score: str = "general", local: str | None = None, window: int = 10,
                 attn_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        check_int("dim", dim)
        self.dropout = check_dropout(dropout)
        check_int("window", window)
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if local not in LOCAL:
            raise ValueError(f"local must be one of {LOCAL}, got {local!r}")
        attn_dim = dim if attn_dim is None else check_int("attn_dim", attn_dim)
        self.dim, self.score, self.local, self.window = dim, score, local, window
        if score == "general":
            self.w_a = nn.Linear(dim, dim, bias=False)
        if score == "concat":
            self.w_q, self.w_k = nn.Linear(dim, attn_dim, bias=False), nn.Linear(dim, attn_dim, bias=False)
            self.v_a = nn.Parameter(torch.randn(attn_dim) * attn_dim ** -0.5)
        if local == "predictive":
            self.w_p = nn.Linear(dim, attn_dim, bias=False)
            self.v_p = nn.Parameter(torch.randn(attn_dim) * attn_dim ** -0.5)
        self.w_c = nn.Linear(2 * dim, dim, bias=False)

    def scores(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """``score(h_t, h_s)`` for every pair: ``(B, T, S)``."""
        if self.score == "dot":
            return target @ source.transpose(1, 2)
        if self.score == "general":
            return target @ self.w_a(source).transpose(1, 2)
        return additive_scores(target, source, self.w_q.weight.T, self.w_k.weight.T, self.v_a)

    def forward(self, target: torch.Tensor, source: torch.Tensor, source_mask: torch.Tensor | None = None):
        check_tokens("target", target, self.dim)
        check_tokens("source", source, self.dim)
        B, T, S = target.shape[0], target.shape[1], source.shape[1]
        if source.shape[0] != B:
            raise ValueError(f"source has batch {source.shape[0]} but target has {B}")
        if source_mask is not None and (source_mask.dtype != torch.bool or source_mask.shape != (B, S)):
            raise ValueError(f"source_mask must be a boolean tensor of shape {(B, S)}, "
                             f"got {source_mask.dtype} {tuple(source_mask.shape)}")
        scores = self.scores(target, source)
        mask = source_mask[:, None, :] if source_mask is not None else None
        if self.local == "predictive":
            length = source_mask.sum(-1, keepdim=True).to(target.dtype) if source_mask is not None else S
            centre = length * torch.sigmoid(torch.tanh(self.w_p(target)) @ self.v_p)  # (B, T)
            weights = local_p_weights(scores, centre, self.window, mask)
        else:
            allowed = torch.ones(T, S, dtype=torch.bool, device=target.device)
            if self.local == "monotonic":
                t, s = torch.arange(T, device=target.device)[:, None], torch.arange(S, device=target.device)
                allowed = (s - t).abs() <= self.window
            allowed = allowed if mask is None else allowed & mask
            weights = masked_softmax(scores, allowed)
        context = drop_weights(self, weights) @ source
        return torch.tanh(self.w_c(torch.cat([context, target], dim=-1))), weights
