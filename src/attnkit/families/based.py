"""Based: linear attention with the 2nd-order Taylor feature map of ``exp``.

Arora et al., "Simple linear attention language models balance the
recall-throughput tradeoff" (2024). The feature map approximates
``exp(s)`` for ``s = scale q . k`` by ``1 + s + s^2 / 2``:

    phi(x) = [1, x, vec_{i<=j}(w_ij x_i x_j)],  x -> x * scale^(1/2),  w_ii = 1/sqrt(2), w_ij = 1 (i<j)

so ``phi(q) . phi(k) = 1 + s + s^2/2`` exactly, with ``1 + d + d(d+1)/2``
features (the symmetric half of ``x x^T``; Based projects q, k to d = 16 so the
state stays small). Normalised linear attention on ``phi`` (always positive:
``1 + s + s^2/2 >= 1/2``). In the paper's architecture the sliding-window
softmax layers are separate layers of the hybrid (attnkit's local attention).
"""
from __future__ import annotations

import torch

from ..builders.linear_pipeline import register_linear_mechanism

PAPER = "Simple linear attention language models balance the recall-throughput tradeoff"


def taylor_feature_dim(head_dim: int) -> int:
    return 1 + head_dim + head_dim * (head_dim + 1) // 2


def taylor_features(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1]
    i, j = torch.triu_indices(d, d, device=x.device)
    # built in x's dtype: a float32 1/sqrt(2) would cap a float64 reference at ~1e-8
    weight = torch.ones(i.shape, dtype=x.dtype, device=x.device).masked_fill_(i == j, 0.5**0.5)
    second = x[..., i] * x[..., j] * weight
    return torch.cat([torch.ones_like(x[..., :1]), x, second], dim=-1)


def based_prepare(q, k, v, *, scale):
    root = scale**0.5
    return taylor_features(q * root), taylor_features(k * root), v, None


register_linear_mechanism(
    "based",
    family="linear",
    papers=(PAPER,),
    prepare=based_prepare,
    normalise=True,
    rowwise=True,
    feature_dim=lambda d, params: taylor_feature_dim(d),
    summary="Based: Taylor feature map phi(q).phi(k) = 1 + s + s^2/2 (s = scale q.k), normalised linear attention",
)
