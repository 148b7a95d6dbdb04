"""Efficient Attention: softmax over query features and over key positions, keys-values first.

Shen et al., "Efficient Attention: Attention with Linear Complexities" (2021):

    E(Q, K, V) = rho_q(Q) (rho_k(K)^T V)

with ``rho_q`` a softmax along each query's features and ``rho_k`` a softmax of
each key feature along the positions. Computing ``rho_k(K)^T V`` (``d x d_v``)
first makes it linear in N; the reference materialises ``rho_q(Q) rho_k(K)^T``
(``N x N``). The softmax over all positions makes it non-causal by definition.
``scale`` multiplies q and k inside both softmaxes as ``scale^(1/2)`` each
(``scale=1.0`` is the paper's form).
"""
from __future__ import annotations

from ..kernels.positions import repeat_kv
from ..registry import MechanismSpec, register

PAPER = "Efficient Attention: Attention with Linear Complexities"


def _normalised(q, k, v, scale):
    root = scale**0.5
    H = q.shape[1]
    return (q * root).softmax(dim=-1), (repeat_kv(k, H) * root).softmax(dim=-2), repeat_kv(v, H)


def efficient_weights(q, k, v, *, causal, mask, scale):
    """The implicit attention matrix ``softmax_features(Q) softmax_positions(K)^T`` (rows sum to one)."""
    rq, rk, _ = _normalised(q, k, v, scale)
    return rq @ rk.transpose(-1, -2)


def efficient_reference(q, k, v, *, causal, mask, scale):
    return efficient_weights(q, k, v, causal=causal, mask=mask, scale=scale) @ repeat_kv(v, q.shape[1])


def efficient_factorised(q, k, v, *, causal, mask, scale):
    rq, rk, v = _normalised(q, k, v, scale)
    return rq @ (rk.transpose(-1, -2) @ v)


def _flops(batch, heads, q_len, kv_len, head_dim, causal):
    return 2 * batch * heads * (kv_len + q_len) * head_dim * head_dim


register(
    MechanismSpec(
        name="efficient_attention",
        family="linear",
        papers=(PAPER,),
        patterns=frozenset({"noncausal-self", "noncausal-cross"}),
        reference=efficient_reference,
        weights=efficient_weights,
        fast={"factorised": efficient_factorised},
        supports_mask=False,
        flops=_flops,
        complexity="O(N)",
        summary="softmax_features(Q) (softmax_positions(K)^T V): linear, non-causal",
    )
)
