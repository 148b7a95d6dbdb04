"""Local Linear Attention (LLA): a local linear regression of values on keys around each query.

Zuo, Yin, Zeng, Li, Zhu & Wang, "Local Linear Attention: An Optimal Interpolation
of Linear and Softmax Attention For Test-Time Regression" (ICLR 2026). Softmax
attention is the Nadaraya-Watson (local constant) estimate of ``v = f(k)`` at the
query; LLA fits ``f(x) = b + W (x - q_i)`` by weighted ridge regression,

    min_{b, W}  1/2 sum_j w_ij ||v_j - b - W (k_j - q_i)||^2  + lambda ||W||_F^2 ,

with the softmax kernel ``w_ij = exp(scale q_i . k_j)`` over the keys query ``i``
sees, and outputs the intercept ``b``. In closed form (the authors' reference,
``flashlla.ops.naive.lla_forward_naive``; their ridge term is ``lambda * omega_i``
with ``omega_i = sum_j w_ij``, i.e. ``lambda`` relative to normalised weights
``s_ij = w_ij / omega_i``, which is how it is written here):

    mu_i    = sum_j s_ij (k_j - q_i)
    Sigma_i = sum_j s_ij (k_j - q_i)(k_j - q_i)^T + lambda I
    rho_i   = Sigma_i^-1 mu_i
    o_i     = sum_j s_ij (1 - rho_i . (k_j - q_i)) v_j / (1 - rho_i . mu_i)

``lambda -> inf`` gives softmax attention. ``scale`` enters only the kernel; the
regression uses the raw ``q`` and ``k`` (as the authors' code does). ``ridge`` is
``lambda`` (default 10.0, the authors' ``lla_attention`` default).

Not from the paper here: FlashLLA's conjugate-gradient solver (both forms solve
exactly), its ``delta_eps`` guard on the denominator (``1 - rho . mu =
1 / (1 + mu^T (C + lambda I)^-1 mu) > 0`` exactly for ``lambda > 0``) and its
block-diagonal ``lla_block_size`` option. Masks, non-causal and cross-attention
follow from the same regression over the allowed keys; a row with no allowed
key outputs zeros. LLA is not a constant-state RNN: decoding keeps the KV cache
and each new query costs Theta(n d^2) (its covariance) plus a d x d solve.
"""
from __future__ import annotations

import torch

from ...params import Param
from .blockwise import local_linear_blockwise, solve
from ...kernels.positions import causal_mask, repeat_kv
from ...registry import ALL_PATTERNS, MechanismSpec, register
from ...scores.normalisers import SOFTMAX
from ...scores.user_mask import apply_mask
from ...builders.kv_cache_step import kv_cache_step
from ...validation import check_float, check_int

PAPER = "Local Linear Attention: An Optimal Interpolation of Linear and Softmax Attention For Test-Time Regression"


def _check(ridge, **blocks) -> None:
    check_float("ridge", ridge, positive=True, finite=True)
    for name, size in blocks.items():
        check_int(name, size)


def softmax_weights(q, k, *, causal, mask, scale, rows=slice(None), end=None):
    """Softmax kernel weights ``s_ij`` of queries ``rows`` over keys ``:end`` (masked pairs 0, empty rows 0)."""
    Nq, Nk = q.shape[2], k.shape[2]
    end = Nk if end is None else end
    k = repeat_kv(k, q.shape[1])[:, :, :end]
    scores = (q[:, :, rows] @ k.transpose(-1, -2)) * scale
    allowed = causal_mask(Nq, Nk, q.device)[rows, :end] if causal else None
    if mask is not None:
        scores, allowed = apply_mask(scores, allowed, mask[..., :end] if mask.shape[2] == 1 else mask[:, :, rows, :end])
    return SOFTMAX.weights(scores, None if allowed is None else allowed.expand_as(scores))


def lla_weights(q, k, v, *, causal, mask, scale, ridge, q_block, kv_block):
    """The hat matrix of the local regression: ``o_i = sum_j W_ij v_j`` with
    ``W_ij = s_ij (1 - rho_i . (k_j - q_i)) / (1 - rho_i . mu_i)`` (every ``(query, key)`` difference
    materialised). Rows sum to one; entries may be negative (the local slope extrapolates)."""
    _check(ridge, q_block=q_block, kv_block=kv_block)
    H, D = q.shape[1], q.shape[-1]
    s = softmax_weights(q, k, causal=causal, mask=mask, scale=scale)
    diff = repeat_kv(k, H)[:, :, None, :, :] - q[:, :, :, None, :]  # (B, H, Nq, Nk, D): k_j - q_i
    mu = torch.einsum("bhij,bhijd->bhid", s, diff)
    sigma = torch.einsum("bhij,bhijd,bhije->bhide", s, diff, diff) + ridge * torch.eye(D, dtype=q.dtype, device=q.device)
    rho = solve(sigma, mu[..., None])[..., 0]
    denominator = 1 - (rho * mu).sum(-1, keepdim=True)
    return s * (1 - torch.einsum("bhijd,bhid->bhij", diff, rho)) / denominator


def lla_reference(q, k, v, *, causal, mask, scale, ridge, q_block, kv_block):
    """The paper's closed form, materialised: the hat matrix (:func:`lla_weights`) times the values."""
    weights = lla_weights(q, k, v, causal=causal, mask=mask, scale=scale, ridge=ridge, q_block=q_block,
                          kv_block=kv_block)
    return weights @ repeat_kv(v, q.shape[1])


def lla_blockwise(q, k, v, *, causal, mask, scale, ridge, q_block, kv_block):
    """Query blocks, key second moments by GEMM, one d x d solve per query (:mod:`attnkit.families.local_linear.blockwise`)."""
    _check(ridge, q_block=q_block, kv_block=kv_block)

    def weights(a, b, end):
        return softmax_weights(q, k, causal=causal, mask=mask, scale=scale, rows=slice(a, b), end=end)

    return local_linear_blockwise(q, k, v, weights, ridge=float(ridge), q_block=q_block, kv_block=kv_block,
                                  causal=causal)


def _flops(batch, heads, q_len, kv_len, head_dim, causal):
    """Per visible pair: scores, weighted key/value sums, the key second moment (2 d^2), the slope read;
    plus one d x d solve (~2/3 d^3) per query."""
    if causal:
        offset = kv_len - q_len
        pairs = q_len * offset + q_len * (q_len + 1) // 2 if offset >= 0 else kv_len * (kv_len + 1) // 2
    else:
        pairs = q_len * kv_len
    d = head_dim
    return batch * heads * (pairs * (2 * d * d + 10 * d) + q_len * (2 * d**3 // 3 + 4 * d * d))


register(
    MechanismSpec(
        name="local_linear",
        family="local-linear",
        papers=(PAPER,),
        patterns=ALL_PATTERNS,
        reference=lla_reference,
        fast={"blockwise": lla_blockwise},
        step=kv_cache_step(lla_blockwise),
        params={"ridge": Param(10.0, float, 'ridge lambda of the local regression', low=0, low_open=True),
                "q_block": Param(128, int, 'queries per block of the blockwise form', low=1),
                "kv_block": Param(256, int, 'keys per block of the blockwise form', low=1)},
        flops=_flops,
        complexity="O(N^2 D^2 + N D^3)",
        weights=lla_weights,
        summary="intercept of a softmax-kernel-weighted ridge regression of v on k - q (local linear, not local constant)",
        test_params={"ridge": 0.5, "q_block": 16, "kv_block": 24},
    )
)
