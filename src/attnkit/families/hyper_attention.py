"""HyperAttention: sortLSH for the large entries, uniform column samples for the rest (Han et al.,
"HyperAttention: Long-context Attention in Near-Linear Time", ICLR 2024).

Non-causal, for queries ``Q`` (``n_q`` rows) and keys ``K`` (``n_k`` rows):

1. **sortLSH.** An angular LSH with ``b = lsh_bits`` random directions ``R``
   hashes each query and key to the Gray-code rank of its sign pattern,
   ``h(x) = g(sum_r [x . R_r > 0] 2^r)``, ``g(c) = c XOR (c >> 1)``. Queries and
   keys are sorted by hash (stably) and cut into ``m = ceil(n_k / block)`` blocks
   (``block`` keys, ``ceil(n_q / m)`` queries each); query block ``t`` of the
   sorted order attends key block ``t`` exactly: the large entries land there.
2. **Sampling.** ``s = samples`` key positions ``u_1 .. u_s`` are drawn uniformly
   (with replacement) from the sorted keys; a query reads every sample outside its
   own block, each with weight ``n_k / s``, an unbiased estimate of the rest of its
   row's softmax mass.

So every query ``i`` has a row of multiplicities ``M_i`` (1 on its block, ``n_k / s``
per draw of each sampled key outside it) and::

    out_i = sum_j M_ij exp(q_i . k_j / sqrt(d)) v_j / sum_j M_ij exp(q_i . k_j / sqrt(d))

A call with fewer than ``min_len`` queries is exact. **Causal** (self-attention):
a sequence of at most ``min_len`` tokens is exact; a longer one (padded with one
zero token when odd) splits into halves: the two diagonal halves recursively
(causal), and the lower-left quadrant (second-half queries, first-half keys) with
the non-causal approximation; the two estimates of each second-half row are
added (their unnormalised sums merged by log-sum-exp), so the multiplicities of the
whole matrix are those of its pieces.

Conventions (checked against the authors' ``hyper_attn.py`` and ``angular_lsh.py``):
one set of LSH directions per call, shared by every head and recursion level; the
samples of each non-causal piece drawn in the order the recursion meets them, per
(batch, head) (the causal split turns each head's two halves into two heads, as their
``view``); sampling happens only when both queries and keys span more than one block.
Departures: the directions and samples come from a ``torch.Generator`` seeded with
``seed`` on the inputs' device, so a call is reproducible; padding keys (when
``n_k`` is not a multiple of ``block``) are masked instead of taking part as zero
keys; for cross-attention the ``n_q`` sorted queries are cut into ``m`` equal blocks.
The choice is not differentiable; gradients flow through the attention over it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..kernels.online_softmax import merge_normalised
from ..kernels.positions import repeat_kv
from ..kernels.tile_rows import attention_with_lse
from ..params import Param
from ..registry import MechanismSpec, register

PAPER = "HyperAttention: Long-context Attention in Near-Linear Time"


class Draws:
    """The call's random numbers, in the order the recursion asks for them: LSH directions, then samples."""

    def __init__(self, seed: int, device, head_dim: int, lsh_bits: int):
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.device = device
        self.directions = torch.randn(head_dim, lsh_bits, generator=self.generator, dtype=torch.float64,
                                      device=device)

    def samples(self, batch: int, heads: int, n_k: int, count: int) -> torch.Tensor:
        return torch.randint(n_k, (batch, heads, count), generator=self.generator, device=self.device)


def lsh_hash(x: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """The Gray-code rank of each row's sign pattern against ``directions``."""
    bits = (x @ directions.to(x.dtype)) > 0
    code = (bits.long() << torch.arange(bits.shape[-1], device=x.device)).sum(-1)
    return code ^ (code >> 1)


def _sorting(q, k, directions, block):
    """Sort orders of queries and keys, the block count and the query block size."""
    q_order = lsh_hash(q, directions).argsort(dim=-1, stable=True)
    k_order = lsh_hash(k, directions).argsort(dim=-1, stable=True)
    blocks = -(-k.shape[2] // block)
    return q_order, k_order, blocks, -(-q.shape[2] // blocks)


def _take(x, index):
    return x.gather(2, index[..., None].expand(*index.shape, x.shape[-1]))


def noncausal_estimate(q, k, v, scale, draws: Draws, p) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and log-sum-exp of the non-causal estimate (inputs ``(B, H, n, D)``, same heads)."""
    B, H, nq, D = q.shape
    nk = k.shape[2]
    if nq < p["min_len"]:
        return attention_with_lse(q, k, v, causal=False, scale=scale)
    block = p["block"]
    with torch.no_grad():
        q_order, k_order, m, qb = _sorting(q.detach(), k.detach(), draws.directions, block)
    sample = (nq > qb) and (nk > block) and p["samples"] > 0
    if sample:
        u = draws.samples(B, H, nk, p["samples"])
    qs = F.pad(_take(q, q_order), (0, 0, 0, m * qb - nq)).view(B, H, m, qb, D)
    ks = F.pad(_take(k, k_order), (0, 0, 0, m * block - nk)).view(B, H, m, block, D)
    vs = F.pad(_take(v, k_order), (0, 0, 0, m * block - nk)).view(B, H, m, block, v.shape[-1])
    scores = (qs @ ks.transpose(-1, -2)) * scale
    scores = scores.masked_fill(torch.arange(m * block, device=q.device).view(m, 1, block) >= nk, float("-inf"))
    values = vs
    if sample:
        ku, vu = _take(_take(k, k_order), u), _take(_take(v, k_order), u)
        su = (qs.flatten(2, 3) @ ku.transpose(-1, -2)).view(B, H, m, qb, -1) * scale + math.log(nk / p["samples"])
        own = (u // block)[:, :, None, :] == torch.arange(m, device=q.device)[:, None]  # (B, H, m, s)
        scores = torch.cat([scores, su.masked_fill(own[:, :, :, None], float("-inf"))], -1)
        values = torch.cat([vs, vu[:, :, None].expand(B, H, m, *vu.shape[2:])], -2)
    lse = scores.logsumexp(-1, keepdim=True)
    out = (torch.exp(scores - lse) @ values).view(B, H, m * qb, -1)[:, :, :nq]
    back = q_order.argsort(-1)
    return _take(out, back), lse.view(B, H, m * qb)[:, :, :nq].gather(-1, back)


def causal_estimate(q, k, v, scale, draws: Draws, p) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and log-sum-exp of the recursive causal estimate (self-attention, same heads)."""
    B, H, n, D = q.shape
    if n <= p["min_len"]:
        return attention_with_lse(q, k, v, causal=True, scale=scale)
    odd = n % 2
    if odd:
        q, k, v = (F.pad(x, (0, 0, 0, 1)) for x in (q, k, v))
    h = (n + odd) // 2
    o_bd, l_bd = causal_estimate(*(x.reshape(B, 2 * H, h, x.shape[-1]) for x in (q, k, v)), scale, draws, p)
    o_bd, l_bd = o_bd.reshape(B, H, 2 * h, -1), l_bd.reshape(B, H, 2 * h)
    o_ll, l_ll = noncausal_estimate(q[:, :, h:], k[:, :, :h], v[:, :, :h], scale, draws, p)
    o_down, l_down = merge_normalised(o_bd[:, :, h:], l_bd[:, :, h:], o_ll, l_ll)
    return torch.cat([o_bd[:, :, :h], o_down], 2)[:, :, :n], torch.cat([l_bd[:, :, :h], l_down], 2)[:, :, :n]


def _params(p):
    return {n: p[n] for n in ("lsh_bits", "block", "samples", "min_len", "seed")}


def hyper_attention(q, k, v, *, causal, mask, scale, **params):
    p = _params(params)
    H = q.shape[1]
    k, v = repeat_kv(k, H), repeat_kv(v, H)
    draws = Draws(p["seed"], q.device, q.shape[-1], p["lsh_bits"])
    return (causal_estimate if causal else noncausal_estimate)(q, k, v, scale, draws, p)[0]


# ---- the reference: the multiplicities M of the whole matrix, from the same draws, then the weighted softmax ----

def noncausal_weights(q, k, rows, draws: Draws, p) -> torch.Tensor:
    """``M`` of query rows ``rows`` against all keys, ``(B, H, len(rows), n_k)``, float64."""
    B, H, nq, _ = q.shape
    nk = k.shape[2]
    if nq < p["min_len"]:
        return torch.ones(B, H, len(rows), nk, dtype=torch.float64, device=q.device)
    block = p["block"]
    q_order, k_order, m, qb = _sorting(q, k, draws.directions, block)
    q_block = q_order.argsort(-1)[:, :, rows] // qb  # the block of each row's sorted position
    k_block = k_order.argsort(-1) // block
    M = (q_block[..., None] == k_block[:, :, None, :]).double()
    if (nq > qb) and (nk > block) and p["samples"] > 0:
        u = draws.samples(B, H, nk, p["samples"])
        for t in range(u.shape[-1]):  # each draw adds n_k / s to its key, for rows outside its block
            key = k_order.gather(-1, u[..., t:t + 1])  # (B, H, 1)
            outside = (q_block != (u[..., t:t + 1] // block)).double() * (nk / p["samples"])
            M.scatter_add_(-1, key[:, :, None].expand(B, H, len(rows), 1), outside[..., None])
    return M


def causal_weights(q, k, rows, draws: Draws, p) -> torch.Tensor:
    """``M`` of rows ``rows`` of the causal recursion, ``(B, H, len(rows), n)``, float64."""
    B, H, n, D = q.shape
    j = torch.arange(n, device=q.device)
    if n <= p["min_len"]:
        return (j <= rows[:, None]).double().expand(B, H, -1, -1)
    odd = n % 2
    if odd:
        q, k = F.pad(q, (0, 0, 0, 1)), F.pad(k, (0, 0, 0, 1))
    h = (n + odd) // 2
    inner = (rows % h).unique()
    sub = causal_weights(q.reshape(B, 2 * H, h, D), k.reshape(B, 2 * H, h, D), inner, draws, p)
    sub = sub.reshape(B, H, 2, len(inner), h)
    low = rows[rows >= h] - h
    ll = noncausal_weights(q[:, :, h:], k[:, :, :h], low, draws, p)
    M = torch.zeros(B, H, len(rows), 2 * h, dtype=torch.float64, device=q.device)
    at = torch.searchsorted(inner, rows % h)
    top = rows < h
    M[:, :, top, :h] = sub[:, :, 0, at[top]]
    M[:, :, ~top, h:] = sub[:, :, 1, at[~top]]
    M[:, :, ~top, :h] = ll
    return M[..., :n]


def weights_of(q, k, rows, *, causal, p) -> torch.Tensor:
    H = q.shape[1]
    k = repeat_kv(k, H)
    draws = Draws(p["seed"], q.device, q.shape[-1], p["lsh_bits"])
    return (causal_weights if causal else noncausal_weights)(q, k, rows, draws, p)


def _weights(q, k, v, *, causal, mask, scale, **params):
    """The estimate's attention matrix ``(B, H, n_q, n_k)``: softmax of the scores plus ``log M``."""
    p = _params(params)
    M = weights_of(q.detach().double(), k.detach().double(), torch.arange(q.shape[2], device=q.device),
                   causal=causal, p=p)
    s = (q @ repeat_kv(k, q.shape[1]).transpose(-1, -2)) * scale
    return torch.softmax(s + torch.log(M).to(s.dtype), -1)  # log 0 = -inf: pairs the estimate never reads


def _reference(q, k, v, *, causal, mask, scale, **params):
    return _weights(q, k, v, causal=causal, mask=mask, scale=scale, **params) @ repeat_kv(v, q.shape[1])


def attended(q, k, rows, *, scale, chunk: int = 1024, **params):
    """Bool ``(B, H, len(rows), N)`` (the keys causal rows ``rows`` read) and the density of the whole call."""
    p = _params(params)
    N = q.shape[2]
    kept = weights_of(q, k, rows, causal=True, p=p) > 0
    pairs = sum(float((weights_of(q, k, torch.arange(r0, min(N, r0 + chunk), device=q.device), causal=True, p=p)
                       > 0).sum()) for r0 in range(0, N, chunk))
    return kept, pairs / (q.shape[0] * q.shape[1] * N * (N + 1) / 2)


def _flops(batch, heads, q_len, kv_len, head_dim, causal, block=256, samples=256, **_):
    per_query = block + samples
    return 4 * batch * heads * q_len * min(kv_len, per_query * max(1, math.ceil(math.log2(max(2, kv_len / block))))
                                           if causal else min(kv_len, per_query)) * head_dim


register(MechanismSpec(
    name="hyper_attention",
    family="training-free-sparse",
    papers=(PAPER,),
    patterns=frozenset({"causal-self", "noncausal-self", "noncausal-cross"}),
    reference=_reference,
    fast={"sorted_blocks": hyper_attention},
    weights=_weights,
    step=None,
    params={"lsh_bits": Param(7, int, "random directions of the angular LSH (2^bits buckets)", low=1),
            "block": Param(256, int, "keys per block of the sorted order", low=1),
            "samples": Param(256, int, "uniformly sampled keys per head and piece (0: none)", low=0),
            "min_len": Param(4096, int, "lengths up to which attention is exact (causal: whole pieces)", low=1),
            "seed": Param(0, int, "seed of the LSH directions and the samples", low=0)},
    test_params={"lsh_bits": 3, "block": 8, "samples": 8, "min_len": 16},
    supports_mask=False,
    flops=_flops,
    complexity="O(N (block + samples) d log(N / min_len))",
    summary="sortLSH block-diagonal attention plus uniformly sampled keys (weighted n / s), recursive causal split",
    selection_reads_whole_prompt=True, extra={"attended": attended},
))
