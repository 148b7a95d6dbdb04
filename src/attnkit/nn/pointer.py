"""Pointer Networks' output layer, from Vinyals, Fortunato & Jaitly, "Pointer Networks" (2015).

The attention distribution over the input positions *is* the output
distribution (eq. 3): for encoder states ``e_j`` and decoder state ``d_i``,

    u_ij = v^T tanh(W_1 e_j + W_2 d_i),   p(C_i | C_1..C_{i-1}, P) = softmax_j(u_ij),

so the output dictionary has one entry per input element, whatever the input length.
"""
from __future__ import annotations

import torch
from torch import nn

from ..families.additive import additive_scores
from ..validation import check_int, check_tokens
from .factory import factory_kwargs


@factory_kwargs
class PointerAttention(nn.Module):
    """``forward(decoder, encoder, mask=None) -> log p`` of shape ``(B, T, N)`` over the input positions.

    ``decoder (B, T, decoder_dim)``, ``encoder (B, N, encoder_dim)``, ``mask`` boolean broadcastable to
    ``(B, T, N)`` (True = may be pointed at; e.g. the positions not yet chosen). Disallowed positions get
    log-probability ``-inf``; a row with no allowed position is all ``-inf`` (probabilities zero, no NaN).
    No ``dropout=``: the weights are the output (the pointer distribution), not weights of values.
    """

    def __init__(self, decoder_dim: int, encoder_dim: int, attn_dim: int):
        super().__init__()
        for name, value in (("decoder_dim", decoder_dim), ("encoder_dim", encoder_dim), ("attn_dim", attn_dim)):
            check_int(name, value)
        self.decoder_dim, self.encoder_dim = decoder_dim, encoder_dim
        self.W1 = nn.Linear(encoder_dim, attn_dim, bias=False)
        self.W2 = nn.Linear(decoder_dim, attn_dim, bias=False)
        self.v = nn.Parameter(torch.randn(attn_dim) * attn_dim ** -0.5)

    def logits(self, decoder: torch.Tensor, encoder: torch.Tensor) -> torch.Tensor:
        """``u_ij``: ``(B, T, N)``."""
        return additive_scores(decoder, encoder, self.W2.weight.T, self.W1.weight.T, self.v)

    def forward(self, decoder, encoder, mask=None):
        check_tokens("decoder", decoder, self.decoder_dim)
        check_tokens("encoder", encoder, self.encoder_dim)
        if decoder.shape[0] != encoder.shape[0]:
            raise ValueError(f"encoder has batch {encoder.shape[0]} but decoder has {decoder.shape[0]}")
        u = self.logits(decoder, encoder)
        if mask is None:
            return torch.log_softmax(u, dim=-1)
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be boolean (True = may be pointed at), got {mask.dtype}")
        u = u.masked_fill(~mask, float("-inf"))
        row_max = u.amax(-1, keepdim=True)
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)).detach()
        shifted = u - row_max
        total = torch.exp(shifted).sum(-1, keepdim=True)
        return shifted - torch.log(total.clamp_min(torch.finfo(u.dtype).tiny))
