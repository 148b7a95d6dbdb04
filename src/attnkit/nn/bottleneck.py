"""Latent / query bottlenecks: a small learned array cross-attends to a large input.

- :class:`PoolingByMultiheadAttention` (PMA), from Lee et al., "Set Transformer:
  A Framework for Attention-based Permutation-Invariant Neural Networks" (2019):
  ``PMA_k(Z) = MAB(S, rFF(Z))`` with ``k`` learned seed vectors ``S`` and the
  multihead attention block ``MAB(X, Y) = LayerNorm(H + rFF(H))``,
  ``H = LayerNorm(X + Multihead(X, Y, Y))``. Pools a set of any size to ``k``
  vectors, invariant to the order of the set.
- :class:`PerceiverEncoder`, from Jaegle et al., "Perceiver: General Perception
  with Iterative Attention" (2021): a learned latent array cross-attends to the
  inputs (cost linear in the input length), then a stack of latent
  self-attention blocks; ``iterations`` repeats both, with weights shared
  across repeats (the paper shares them after the first).

The attention inside both is :class:`attnkit.nn.Attention`, so any registered
mechanism supporting non-causal cross-attention can be used.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from ..validation import check_int, check_tokens
from .dropout import check_dropout
from .factory import factory_kwargs


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


def _padding(mask, inputs):
    if mask is None:
        return None
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(inputs.shape[:2]):
        raise ValueError(f"mask must be a boolean key-padding mask of shape {tuple(inputs.shape[:2])} (True = real input)")
    return mask[:, None, None, :]


@factory_kwargs
class PoolingByMultiheadAttention(nn.Module):
    """Set Transformer's pooling by multihead attention: ``seeds`` learned queries
    cross-attend to the input set. See the module docstring. ``dropout``: dropout on the attention weights while training (:mod:`attnkit.nn.dropout`).
    """

    def __init__(self, dim: int, heads: int, seeds: int = 1, *, mechanism: str = "softmax", dropout: float = 0.0,
                 **mechanism_params):
        super().__init__()
        check_int("dim", dim)
        check_int("seeds", seeds)
        check_dropout(dropout)
        self.dim = dim
        self.seeds = nn.Parameter(torch.randn(1, seeds, dim) * dim ** -0.5)
        self.rff_in = _mlp(dim, dim)  # the rFF applied to the set before pooling
        self.attn = Attention(dim, heads, mechanism=mechanism, bias=True, dropout=dropout, **mechanism_params)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.rff_out = _mlp(dim, dim)

    def forward(self, z, mask=None):
        """A set ``z (B, N, dim)`` (``mask (B, N)``, True = member) -> ``(B, seeds, dim)``."""
        check_tokens("z", z, self.dim)
        s = self.seeds.expand(z.shape[0], -1, -1).to(z.dtype)
        h = self.norm1(s + self.attn(s, self.rff_in(z), mask=_padding(mask, z)))
        return self.norm2(h + self.rff_out(h))


@factory_kwargs
class PerceiverEncoder(nn.Module):
    """Perceiver encoder: a learned latent array cross-attends to the input, then self-attends
    for ``latent_layers`` layers, ``iterations`` times. See the module docstring. ``dropout``: dropout on the attention weights while training (:mod:`attnkit.nn.dropout`),
    in the cross-attention and every latent self-attention.
    """

    def __init__(self, input_dim: int, latent_dim: int, num_latents: int, *, cross_heads: int = 1,
                 latent_heads: int = 4, latent_layers: int = 2, iterations: int = 1, mechanism: str = "softmax",
                 dropout: float = 0.0, **mechanism_params):
        super().__init__()
        for name, value in (("input_dim", input_dim), ("latent_dim", latent_dim), ("num_latents", num_latents),
                            ("latent_layers", latent_layers), ("iterations", iterations)):
            check_int(name, value)
        check_dropout(dropout)
        self.input_dim, self.iterations = input_dim, iterations
        self.latents = nn.Parameter(torch.randn(1, num_latents, latent_dim) * latent_dim ** -0.5)
        self.cross_norm, self.input_norm = nn.LayerNorm(latent_dim), nn.LayerNorm(input_dim)
        self.cross = Attention(latent_dim, cross_heads, context_dim=input_dim, mechanism=mechanism, dropout=dropout,
                               **mechanism_params)
        self.cross_mlp = nn.Sequential(nn.LayerNorm(latent_dim), _mlp(latent_dim, 4 * latent_dim))
        self.self_norms = nn.ModuleList(nn.LayerNorm(latent_dim) for _ in range(latent_layers))
        self.self_attns = nn.ModuleList(
            Attention(latent_dim, latent_heads, mechanism=mechanism, dropout=dropout, **mechanism_params)
            for _ in range(latent_layers)
        )
        self.self_mlps = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(latent_dim), _mlp(latent_dim, 4 * latent_dim)) for _ in range(latent_layers)
        )

    def forward(self, inputs, mask=None):
        """``inputs (B, M, input_dim)`` (``mask (B, M)``, True = real input) -> latents ``(B, num_latents, latent_dim)``."""
        check_tokens("inputs", inputs, self.input_dim)
        pad = _padding(mask, inputs)
        context = self.input_norm(inputs)
        z = self.latents.expand(inputs.shape[0], -1, -1).to(inputs.dtype)
        for _ in range(self.iterations):
            z = z + self.cross(self.cross_norm(z), context, mask=pad)
            z = z + self.cross_mlp(z)
            for norm, attn, mlp in zip(self.self_norms, self.self_attns, self.self_mlps):
                z = z + attn(norm(z))
                z = z + mlp(z)
        return z
