"""GAAM: multi-head Gaussian adaptive attention, weights from learned Gaussians of standardised features.

Ioannides, Chadha & Elkins, "Gaussian Adaptive Attention is All You Need: Robust Contextual
Representations Across Multiple Modalities" (2024; later versions call it DAAM, density adaptive
attention). No query-key product: along one axis of the input (``dim``, the sequence by
default), each head takes its own contiguous chunk ``x`` of that axis and reweights it by a
product of ``G`` Gaussians of its standardised values, each with a learned mean offset
``delta_g`` and a learned scale ``c_g``::

    mu = mean(x),  s^2 = var(x) + eps                              (over the head's chunk, unbiased var)
    p  = prod_g exp(-((x - mu - delta_g) / s)^2 / (2 c_g^2)) / sqrt(2 pi c_g^2)
    w  = p / max(sum(p), eps)                                       (the attention: sums to 1 unless sum(p) < eps)
    out = x * w

as the authors' code computes it (a chunk per head, the last head taking any remainder;
``delta = 0`` and ``c = exp(N(0, 1))`` at the start). Two parameters per head and Gaussian.
Because ``x`` enters through ``(x - mu) / s``, the weights do not change when a chunk is
shifted or scaled by a positive factor. The paper's Gaussian adaptive transformer adds the
input back (``x + out``); :meth:`GaussianAdaptiveAttention.forward` returns ``out`` (and with
``return_weights=True`` the weights ``w``, from which the paper's Importance Factor is read).
It forms no attention matrix, so it takes no ``dropout=``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .factory import factory_kwargs
from ..validation import check_int


@factory_kwargs
class GaussianAdaptiveAttention(nn.Module):
    """``heads`` chunks of axis ``dim``, each reweighted by ``gaussians`` learned Gaussians of its standardised values.

    No ``dropout=``: the weights scale features one by one; there is no attention matrix to drop from.
    """

    def __init__(self, heads: int, gaussians: int = 1, *, dim: int = -2, eps: float = 1e-8):
        super().__init__()
        check_int("heads", heads)
        check_int("gaussians", gaussians)
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int (the axis the heads split and normalise), got {dim!r}")
        if not (isinstance(eps, float) and eps > 0):
            raise ValueError(f"eps must be a float > 0, got {eps!r}")
        self.heads, self.dim, self.eps = heads, dim, eps
        self.mean_offsets = nn.Parameter(torch.zeros(heads, gaussians))
        self.scales = nn.Parameter(torch.exp(torch.randn(heads, gaussians)))

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}")
        if not -x.ndim <= self.dim < x.ndim:
            raise ValueError(f"x has {x.ndim} dimensions but the layer normalises along dim={self.dim}")
        size = x.shape[self.dim]
        if size < 2 * self.heads:
            raise ValueError(f"x has {size} entries along dim={self.dim}; {self.heads} heads need at least 2 each "
                             f"(each head standardises its chunk)")
        if x.dtype != self.scales.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the layer's parameters are {self.scales.dtype}")
        chunk = size // self.heads
        weights = []
        for h in range(self.heads):
            end = size if h == self.heads - 1 else (h + 1) * chunk
            weights.append(self._head_weights(x.narrow(self.dim, h * chunk, end - h * chunk), h))
        w = torch.cat(weights, dim=self.dim)
        return (x * w, w) if return_weights else x * w

    def _head_weights(self, x: torch.Tensor, h: int) -> torch.Tensor:
        mu = x.mean(dim=self.dim, keepdim=True)
        s = torch.sqrt(x.var(dim=self.dim, keepdim=True) + self.eps)
        p = torch.ones_like(x)
        for delta, c in zip(self.mean_offsets[h], self.scales[h]):
            y = (x - mu - delta) / s
            p = p * torch.exp(-y ** 2 / (2 * c ** 2)) / torch.sqrt(2 * math.pi * c ** 2)
        return p / p.sum(dim=self.dim, keepdim=True).clamp(min=self.eps)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, gaussians={self.mean_offsets.shape[1]}, dim={self.dim}"
