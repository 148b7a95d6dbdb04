"""Performer: FAVOR+ positive orthogonal random features for the softmax kernel.

Choromanski et al., "Rethinking Attention with Performers" (2021). With
``x -> x * scale^(1/2)`` on queries and keys,

    phi(x) = exp(W x - |x|^2 / 2) / sqrt(m),   E[phi(q) . phi(k)] = exp(scale q . k)

for rows of ``W`` Gaussian; FAVOR+ draws them in blocks of ``d`` exactly
orthogonal directions with chi-distributed norms (lower variance, still
unbiased). Attention is then normalised linear attention on ``phi``. The
features are the tensor input ``features`` ``(m, head_dim)``; redraw them with
:func:`draw_features` (new seed) as the paper does during training. Without
``features`` the forms draw ``m = d ln d`` of them from the ``seed`` param.
"""
from __future__ import annotations

import math

import torch

from ..params import Param, TensorInput
from ..validation import check_tensor
from ..builders.linear_pipeline import register_linear_mechanism

PAPER = "Rethinking Attention with Performers"


def default_feature_count(head_dim: int) -> int:
    """The paper code's default ``m = d ln d`` (at least 1)."""
    return max(1, int(head_dim * math.log(head_dim)))


def draw_features(m: int, head_dim: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """``m`` positive-orthogonal random feature directions ``(m, head_dim)``."""
    g = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(math.ceil(m / head_dim)):
        gauss = torch.randn(head_dim, head_dim, generator=g, dtype=torch.float64)
        blocks.append(torch.linalg.qr(gauss).Q.T)  # rows: orthonormal directions
    directions = torch.cat(blocks)[:m]
    norms = torch.randn(m, head_dim, generator=g, dtype=torch.float64).norm(dim=1, keepdim=True)  # chi(d)
    return (directions * norms).to(dtype)


def favor_features(x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    m = features.shape[0]
    return torch.exp(x @ features.T - 0.5 * (x * x).sum(-1, keepdim=True)) / math.sqrt(m)


def performer_prepare(q, k, v, *, scale, seed, features=None):
    D = q.shape[-1]
    if features is None:
        features = draw_features(default_feature_count(D), D, seed, q.dtype)
    else:
        m = features.shape[0] if isinstance(features, torch.Tensor) and features.ndim == 2 else -1
        check_tensor("features", features, (m, D), q, what="(num_features, head_dim) random directions")
    root = scale**0.5
    return favor_features(q * root, features), favor_features(k * root, features), v, None


def performer_inputs(q, k, v, generator):
    D = q.shape[-1]
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return {"features": draw_features(default_feature_count(D), D, seed, q.dtype)}


register_linear_mechanism(
    "performer",
    family="linear",
    papers=(PAPER,),
    prepare=performer_prepare,
    normalise=True,
    feature_dim=lambda d, params: default_feature_count(d),
    params={"seed": Param(0, int, 'seed of the random features drawn when `features` is not given', low=0)},
    tensor_inputs=performer_inputs,
    inputs={"features": TensorInput("(m, Dk)", "random feature projections; drawn from `seed` when absent", required=False)},
    summary="FAVOR+: softmax kernel estimated with positive orthogonal random features (m = d ln d)",
)
