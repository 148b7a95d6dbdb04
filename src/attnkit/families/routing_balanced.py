"""Routing attention with balanced clusters (Roy, Saffar, Vaswani and Grangier, "Efficient Content-Based
Sparse Attention with Routing Transformers"), as the authors' code runs it.

The paper routes by online k-means (see :mod:`.routing` for the nearest-centroid
form and the centroid update). To keep clusters the same size, the authors' code
(the paper's TensorFlow release and the PyTorch port it links) does not assign each
token to its nearest centroid: each centroid takes the ``w`` tokens closest to it,
queries and keys each::

    I_c^Q = top-w_i  sim(Q_i, mu_c),   I_c^K = top-w_j  sim(K_j, mu_c)      (positions, increasing)
    O_c   = softmax(Q_{I_c^Q} K_{I_c^K}^T / sqrt(d) + M_c) V_{I_c^K},   M_c = 0 where I^Q_{c,a} >= I^K_{c,b}, else -inf
    X'_i  = mean over the clusters c with i in I_c^Q of O_c at i          (0 when no cluster took i)

with ``sim`` the cosine similarity (queries, keys and centroids compared by
direction, as :mod:`.routing`; computed in float64, ties to the earlier token).
A token may be taken by several clusters (its outputs are averaged, the authors'
scatter-mean) or by none (zeros, as theirs).

Readings, where the authors' two codes and the paper leave a choice:

- the mean is exact (the codes add 1e-2 or 1e-5 to the count);
- the causal mask compares original positions. The codes mask the lower
  triangle of each cluster's sorted list, which is the same thing when queries
  and keys are shared (their causal LMs); with separate q and k selections only
  positions keep it causal;
- a query whose cluster holds no key at or before it gets zeros from that
  cluster, still counted in the mean;
- with GQA every query head selects with its own centroids among the shared keys.

Causality: the attention given the selection is causal, so a later value never
changes an earlier output. The *selection* looks ahead: top-w is taken over the
whole sequence, so a later token can push an earlier one out of (or into) a
cluster, exactly as in the authors' training. Hence no incremental form (the
authors' decoder re-selects among the tokens so far at every step, which is not
the training-time function). For a truly causal routing use ``routing``
(nearest centroid).

Forms: ``reference`` (the weights materialised, cluster by cluster) and
``gathered`` (each cluster's ``w`` queries and keys gathered: ``C w^2`` scores).
"""
from __future__ import annotations

import torch

from ..kernels.positions import repeat_kv
from ..params import Param, TensorInput
from ..reference import materialised_weights
from ..registry import SELF_PATTERNS, MechanismSpec, register
from .routing import PAPER, attend_allowed, centroid_similarity, check_centroids, routing_inputs


def cluster_members(x: torch.Tensor, centroids: torch.Tensor, window: int) -> torch.Tensor:
    """Each centroid's ``min(window, N)`` closest vectors of ``x (B, H, N, D)``: positions ``(B, H, C, w)``, increasing.

    By cosine similarity in float64; ties go to the earlier position.
    """
    sim = centroid_similarity(x, centroids).transpose(-1, -2)  # (B, H, C, N)
    w = min(window, x.shape[2])
    order = sim.sort(dim=-1, descending=True, stable=True).indices
    return order[..., :w].sort(dim=-1).values


def _members(q, k, centroids, window):
    check_centroids(q, centroids)
    return cluster_members(q, centroids, window), cluster_members(repeat_kv(k, q.shape[1]), centroids, window)


def _weights(q, k, v, *, causal, mask, scale, window, centroids):
    """Mean over the clusters that took query i of the softmax over their keys (zeros elsewhere)."""
    qi, ki = _members(q, k, centroids, window)
    B, H, N = q.shape[0], q.shape[1], q.shape[2]
    rows = torch.arange(N, device=q.device)
    total = torch.zeros(B, H, N, k.shape[2], dtype=q.dtype, device=q.device)
    taken = torch.zeros(B, H, N, dtype=q.dtype, device=q.device)
    for c in range(centroids.shape[1]):
        q_in = (qi[:, :, c, :, None] == rows).any(dim=2)  # (B, H, N)
        k_in = (ki[:, :, c, :, None] == rows).any(dim=2)
        allowed = q_in[..., :, None] & k_in[..., None, :]
        if causal:
            allowed = allowed & (rows[None, :] <= rows[:, None])
        total = total + materialised_weights(q, k, causal=False, mask=allowed, scale=scale)
        taken = taken + q_in.to(q.dtype)
    return total / taken.clamp(min=1)[..., None]


def _reference(q, k, v, *, causal, mask, scale, window, centroids):
    return _weights(q, k, v, causal=causal, mask=mask, scale=scale, window=window, centroids=centroids) \
        @ repeat_kv(v, q.shape[1])


def _gathered(q, k, v, *, causal, mask, scale, window, centroids):
    qi, ki = _members(q, k, centroids, window)
    B, H, N, D = q.shape
    Dv = v.shape[3]
    C, w = qi.shape[2], qi.shape[3]

    def gather(x, index, dim):
        return x[:, :, None].expand(B, H, C, N, dim).gather(3, index[..., None].expand(B, H, C, w, dim))

    qs, ks, vs = gather(q, qi, D), gather(repeat_kv(k, H), ki, D), gather(repeat_kv(v, H), ki, Dv)
    allowed = qi[..., :, None] >= ki[..., None, :] if causal else torch.ones(
        1, 1, 1, w, w, dtype=torch.bool, device=q.device)
    out_c = attend_allowed(qs, ks, vs, allowed, scale)  # (B, H, C, w, Dv)
    flat = qi.reshape(B, H, C * w)
    out = torch.zeros(B, H, N, Dv, dtype=out_c.dtype, device=q.device).scatter_add(
        2, flat[..., None].expand(B, H, C * w, Dv), out_c.reshape(B, H, C * w, Dv))
    taken = torch.zeros(B, H, N, dtype=out_c.dtype, device=q.device).scatter_add(
        2, flat, torch.ones(B, H, C * w, dtype=out_c.dtype, device=q.device))
    return out / taken.clamp(min=1)[..., None]


def _flops(batch, heads, q_len, kv_len, head_dim, causal, window=64, clusters=4, **_):
    """Forward FLOPs: ``C`` clusters of ``w`` queries and keys each, plus the similarities to the centroids."""
    w = min(window, q_len)
    pairs = clusters * (w * (w + 1) // 2 if causal else w * w)
    return 4 * batch * heads * head_dim * pairs + 2 * batch * heads * (q_len + kv_len) * clusters * head_dim


register(MechanismSpec(
    name="routing_balanced",
    family="content-sparse",
    papers=(PAPER,),
    patterns=SELF_PATTERNS,
    reference=_reference,
    fast={"gathered": _gathered},
    weights=_weights,
    params={"window": Param(64, int, "tokens each cluster takes (its top-w queries and keys; at most N)", low=1)},
    test_params={"window": 24},
    inputs={"centroids": TensorInput("(H, C, D)", "k-means centroids of each query head (see routing.update_centroids)")},
    tensor_inputs=routing_inputs,
    supports_mask=False,
    selection_reads_whole_prompt=True,
    flops=_flops,
    complexity="O(C w^2 + N C)",
    summary="each k-means centroid takes its top-w queries and keys (balanced clusters, as the authors' code) and "
            "they attend within it, causally by position; the selection looks ahead (top-w over the whole sequence), "
            "the attention given it is causal; readings: a token's outputs are averaged exactly over the clusters "
            "that took it (zeros if none), a cluster with no earlier key gives that query zeros",
))
