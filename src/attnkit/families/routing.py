"""Routing attention (Roy, Saffar, Vaswani and Grangier, "Efficient Content-Based Sparse Attention with
Routing Transformers").

Queries and keys live in one space, clustered by online k-means with ``C``
centroids ``mu_1 .. mu_C`` per head. A query attends only to the keys routed to
its own cluster (causal: none of its future)::

    mu(x) = argmax_c  <mu_c / ||mu_c||, x / ||x||>                      (nearest centroid)
    X'_i  = sum_{j : mu(K_j) = mu(Q_i), j <= i} A_ij V_j,
    A_i   = softmax_j (Q_i K_j^T / sqrt(d))  over those j

and the centroids follow the paper's mini-batch k-means update, an exponential
moving average of the queries and keys routed to each of them::

    mu <- lambda mu + (1 - lambda)/2 sum_{i : mu(Q_i) = mu} Q_i + (1 - lambda)/2 sum_{j : mu(K_j) = mu} K_j

(:func:`update_centroids`, ``lambda = decay``; it returns new centroids, the
inputs are not changed).

Conventions: the centroids ``(H, C, D)`` are a tensor input, one set per query
head (a GQA group's heads route the shared keys each with their own centroids);
queries, keys and centroids are compared by direction (all unit-normalised,
spherical k-means), so the update's sums are taken over unit-normalised queries
and keys and need no division by cluster sizes; the causal rule includes the
query's own position (the paper writes ``j < i``; attnkit's causal attention
everywhere lets a query see itself); assignments are made in float64 and ties
go to the lower centroid, so a float32 and a float64 call route alike unless a
token is within float32 rounding of two centroids. A query with no key of its
cluster at or before it outputs zeros. Routing is not differentiable (the
paper's k-means is trained by the update above, not by gradients): gradients
reach q, k and v through the attention only.

Forms: ``reference`` (the mask ``mu(Q_i) = mu(K_j), j <= i`` materialised) and
``clustered`` (queries and keys sorted by cluster and position; each chunk of
sorted queries attends to the contiguous run of sorted keys of its clusters,
recomputed in the backward): ``O(N^2 / C)`` time for balanced clusters,
``O(N)`` memory besides one chunk's scores. Incremental decode runs the fast
form against the KV cache (a cached key's cluster does not change).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..builders.kv_cache_step import kv_cache_step
from ..kernels.positions import query_positions, repeat_kv
from ..params import TensorInput
from ..reference import materialised_attention, materialised_weights
from ..registry import SELF_PATTERNS, MechanismSpec, register
from ..validation import check_float, check_tensor

PAPER = "Efficient Content-Based Sparse Attention with Routing Transformers"


def routing_inputs(q, k, v, generator=None, *, clusters: int = 4) -> dict:
    """Example centroids ``(H, clusters, D)`` for given q, k, v (random unit directions; q's dtype and device)."""
    H, D = q.shape[1], q.shape[3]
    mu = torch.randn(H, clusters, D, generator=generator, dtype=torch.float64)
    return {"centroids": F.normalize(mu, dim=-1).to(dtype=q.dtype, device=q.device)}


def check_centroids(q, centroids):
    if not isinstance(centroids, torch.Tensor) or centroids.ndim != 3:
        raise ValueError("centroids must be a tensor (heads, clusters, head_dim) of k-means centroids")
    check_tensor("centroids", centroids, (q.shape[1], centroids.shape[1], q.shape[3]), q,
                 what="(heads, clusters, head_dim)")


def assign_clusters(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``mu(x)``: the nearest centroid (by direction) of each vector of ``x (B, H, N, D)``, long ``(B, H, N)``.

    ``centroids (H, C, D)``; computed in float64, ties to the lower centroid.
    """
    return centroid_similarity(x, centroids).argmax(dim=-1)


def centroid_similarity(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``(B, H, N, C)`` of each vector of ``x (B, H, N, D)`` to each centroid, in float64."""
    return F.normalize(x.detach().double(), dim=-1) @ F.normalize(centroids.detach().double(), dim=-1).transpose(-1, -2)


def update_centroids(centroids: torch.Tensor, q: torch.Tensor, k: torch.Tensor, *, decay: float = 0.999) -> torch.Tensor:
    """The paper's mini-batch k-means step: new centroids from the queries and keys routed to each.

    ``centroids (H, C, D)``, ``q (B, H, N, D)``, ``k (B, Hkv, N', D)`` (repeated over a GQA group);
    sums over batch and positions of the unit-normalised vectors. Returns a new tensor.
    """
    check_float("decay", decay, minimum=0.0)
    if decay > 1:
        raise ValueError(f"decay must lie in [0, 1], got {decay}")
    check_centroids(q, centroids)
    H, C, D = centroids.shape
    new = decay * centroids.detach().double()
    for x in (q, repeat_kv(k, H)):
        routed = F.one_hot(assign_clusters(x, centroids), C).double()  # (B, H, N, C)
        unit = F.normalize(x.detach().double(), dim=-1)
        new = new + (1 - decay) / 2 * torch.einsum("bhnc,bhnd->hcd", routed, unit)
    return new.to(centroids.dtype)


def _reference(q, k, v, *, causal, mask, scale, centroids):
    return materialised_attention(q, k, v, causal=False, mask=_same_cluster(q, k, causal, centroids), scale=scale)


def _weights(q, k, v, *, causal, mask, scale, centroids):
    """Softmax weights over the keys of the query's cluster (zeros elsewhere)."""
    return materialised_weights(q, k, causal=False, mask=_same_cluster(q, k, causal, centroids), scale=scale)


def _same_cluster(q, k, causal, centroids):
    check_centroids(q, centroids)
    H, Nq, Nk = q.shape[1], q.shape[2], k.shape[2]
    same = assign_clusters(q, centroids)[..., :, None] == assign_clusters(repeat_kv(k, H), centroids)[..., None, :]
    if causal:
        same = same & (torch.arange(Nk, device=q.device) <= query_positions(Nq, Nk, q.device)[:, None])
    return same


def attend_allowed(q, k, v, allowed, scale):
    """Softmax attention of ``q (..., n, D)`` over ``k, v (..., m, D)`` where ``allowed (..., n, m)``;
    a row with no allowed key is zeros."""
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    top = scores.amax(dim=-1, keepdim=True).clamp(min=torch.finfo(scores.dtype).min)  # -inf rows -> finite
    p = torch.exp(scores - top)
    total = p.sum(dim=-1, keepdim=True)
    return (p @ v) / torch.where(total > 0, total, torch.ones_like(total))


def _clustered(q, k, v, *, causal, mask, scale, centroids, chunk: int = 256):
    check_centroids(q, centroids)
    B, H, Nq, D = q.shape
    Nk, Dv = k.shape[2], v.shape[3]
    G = B * H
    dev = q.device
    cq = assign_clusters(q, centroids).reshape(G, Nq)
    ck = assign_clusters(repeat_kv(k, H), centroids).reshape(G, Nk)
    qpos = query_positions(Nq, Nk, dev)
    kpos = torch.arange(Nk, device=dev)
    # sort keys and queries by (cluster, position): a cluster's keys form one run of the sorted keys
    korder = (ck * Nk + kpos).argsort(dim=1)
    qorder = (cq * Nk + qpos).argsort(dim=1)
    ck_sorted, cq_sorted = ck.gather(1, korder), cq.gather(1, qorder)
    C = centroids.shape[1]
    bounds = torch.searchsorted(ck_sorted, torch.arange(C + 1, device=dev).expand(G, C + 1).contiguous())
    rows = torch.arange(G, device=dev)[:, None]
    qs = q.reshape(G, Nq, D).gather(1, qorder[..., None].expand(G, Nq, D))
    kflat = repeat_kv(k, H).reshape(G, Nk, D)
    vflat = repeat_kv(v, H).reshape(G, Nk, Dv)
    outs = []
    for c0 in range(0, Nq, chunk):
        c1 = min(c0 + chunk, Nq)
        first, last = cq_sorted[:, c0], cq_sorted[:, c1 - 1]
        lo, hi = bounds[rows[:, 0], first], bounds[rows[:, 0], last + 1]
        width = max(int((hi - lo).max()), 1)
        slot = lo[:, None] + torch.arange(width, device=dev)  # (G, width) sorted-key slots of this chunk
        inside = slot < hi[:, None]
        key_index = korder.gather(1, slot.clamp(max=Nk - 1))
        allowed = inside[:, None, :] & (ck_sorted.gather(1, slot.clamp(max=Nk - 1))[:, None, :]
                                        == cq_sorted[:, c0:c1, None])
        if causal:
            allowed = allowed & (key_index[:, None, :] <= qpos[qorder[:, c0:c1]][..., None])
        kc = kflat.gather(1, key_index[..., None].expand(G, width, D))
        vc = vflat.gather(1, key_index[..., None].expand(G, width, Dv))
        args = (qs[:, c0:c1], kc, vc, allowed, scale)
        outs.append(checkpoint(attend_allowed, *args, use_reentrant=False) if torch.is_grad_enabled()
                    else attend_allowed(*args))
    out_sorted = torch.cat(outs, dim=1)
    out = torch.empty_like(out_sorted).scatter(1, qorder[..., None].expand(G, Nq, Dv), out_sorted)
    return out.reshape(B, H, Nq, Dv)


def _flops(batch, heads, q_len, kv_len, head_dim, causal, clusters=4, **_):
    """Forward FLOPs with balanced clusters: each query meets 1/C of the (causal) keys."""
    pos = torch.arange(kv_len - q_len, kv_len)
    pairs = int((pos + 1).clamp(max=kv_len).sum()) if causal else q_len * kv_len
    return 4 * batch * heads * head_dim * pairs // clusters + 2 * batch * heads * (q_len + kv_len) * clusters * head_dim


register(MechanismSpec(
    name="routing",
    family="content-sparse",
    papers=(PAPER,),
    patterns=SELF_PATTERNS,
    reference=_reference,
    fast={"clustered": _clustered},
    weights=_weights,
    step=kv_cache_step(_clustered),
    inputs={"centroids": TensorInput("(H, C, D)", "k-means centroids of each query head (see update_centroids)")},
    tensor_inputs=routing_inputs,
    supports_mask=False,
    flops=_flops,
    complexity="O(N^2 / clusters)",
    summary="queries attend to the keys of their own online k-means cluster (shared q/k centroids)",
))
