"""Adamas: 2-bit codes of Hadamard-transformed queries and keys choose the keys a decode query reads
("Adamas: Hadamard Sparse Attention for Efficient Long-Context Inference").

The Hadamard transform ``H`` (unnormalised Sylvester matrix; a head
dimension that is not a power of two is padded with zeros to one) spreads each vector's mass evenly over its coordinates, so a coarse
per-coordinate code keeps enough of it to compare queries with keys. Every
coordinate is bucketised by the thresholds ``(-t, 0, t)`` into a 2-bit code
``c(x) in {0, 1, 2, 3}``; a query scores each earlier key by the Manhattan
distance of the codes and reads exactly the ``top_k - 1`` closest keys plus
its own position::

    c(x)_i = #{ b in (-t, 0, t) : (x H)_i > b }
    d_j    = sum_i |c(q)_i - c(k_j)_i|                    j < position of q
    I      = {position of q} + the top_k - 1 smallest d_j
    out    = softmax(q K[I]^T / sqrt(d)) V[I]

Conventions: ``t = threshold`` is in units of the unnormalised transform (the
authors' code uses 10 for head dimension 128); ties of the integer distances
go to the earlier key in every form; a query with at most ``top_k`` keys in its
past reads them all. The choice is not differentiable (gradients flow through
the exact attention over ``I``).

Forms: ``reference`` (codes and distances written out in float64, ranks from a
stable sort, the element mask) and ``gathered`` (the distance as a product of
thermometer codes, ``|a - b| = sum_l [a > l] + [b > l] - 2 [a > l][b > l]``,
one matrix product over the cache; each query gathers its keys). The
incremental state is a :class:`~attnkit.state.DigestKVCache` holding the keys'
codes (one byte per coordinate of the padded transform).
"""
from __future__ import annotations

import torch

from ..kernels.gathered_keys import gathered_attention
from ..kernels.positions import query_positions, repeat_kv
from ..params import Param
from ..reference import materialised_attention
from ..registry import MechanismSpec, register
from ..state import DigestKVCache

PAPER = "Adamas: Hadamard Sparse Attention for Efficient Long-Context Inference"
LEVELS = 3  # a 2-bit code has three thresholds


def padded_dim(d: int) -> int:
    """The power of two the transform works in: ``d`` padded with zeros up to it."""
    return 1 << max(0, d - 1).bit_length()


def hadamard(d: int, *, dtype, device) -> torch.Tensor:
    """``(d, P)``: the first ``d`` rows of the unnormalised ``P x P`` Sylvester Hadamard matrix, ``P = padded_dim(d)``
    (``x @ hadamard`` transforms ``x`` padded with zeros)."""
    h = torch.ones(1, 1, dtype=dtype, device=device)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h[:d]


def codes(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """``(..., P)`` uint8 codes in ``{0, 1, 2, 3}`` of ``x H``: how many of ``(-t, 0, t)`` each coordinate exceeds."""
    y = x @ hadamard(x.shape[-1], dtype=x.dtype, device=x.device)
    return ((y > -threshold).to(torch.uint8) + (y > 0).to(torch.uint8) + (y > threshold).to(torch.uint8))


def _thermometer(c: torch.Tensor, dtype) -> torch.Tensor:
    """``(..., D)`` codes -> ``(..., 3 D)`` indicators ``[c > l]``, ``l = 0, 1, 2``."""
    levels = torch.arange(LEVELS, device=c.device)
    return (c[..., None] > levels).flatten(-2).to(dtype)


def _chosen(q, key_codes, kv_len, top_k, threshold, c0, c1):
    """Indices ``(B, H, c, K)`` and validity of the keys queries ``c0:c1`` read (distance ties: earlier key)."""
    B, H, _, D = q.shape
    Hkv = key_codes.shape[1]
    tq = _thermometer(codes(q[:, :, c0:c1], threshold), q.dtype)  # (B, H, c, 3D)
    tk = _thermometer(key_codes, q.dtype)  # (B, Hkv, N, 3D)
    c = c1 - c0
    cross = tq.reshape(B, Hkv, H // Hkv * c, -1) @ tk.transpose(-1, -2)
    dist = (tk.sum(-1)[:, :, None, :] - 2 * cross).view(B, H, c, kv_len) + tq.sum(-1, keepdim=True)
    pos = query_positions(q.shape[2], kv_len, q.device)[c0:c1]
    j = torch.arange(kv_len, device=q.device)
    order = dist.round().long() * kv_len + j  # smaller distance first, then the earlier key
    order = order.masked_fill(j == pos[:, None], -1).masked_fill(j > pos[:, None], torch.iinfo(torch.long).max)
    index = order.topk(min(top_k, kv_len), dim=-1, largest=False).indices
    return index, index <= pos[:, None]


def _attend(q, k, v, key_codes, scale, top_k, threshold, chunk=256):
    Nq = q.shape[2]
    with torch.no_grad():
        picks = [_chosen(q.detach(), key_codes, k.shape[2], top_k, threshold, c0, min(Nq, c0 + chunk))
                 for c0 in range(0, Nq, chunk)]
    index, valid = (torch.cat(parts, dim=2) for parts in zip(*picks))
    return gathered_attention(q, k, v, index, valid, scale=scale)


def adamas_gathered(q, k, v, *, causal, mask, scale, top_k, threshold):
    return _attend(q, k, v, codes(k.detach(), threshold), scale, top_k, threshold)


def reference_mask(q, k, *, top_k, threshold) -> torch.Tensor:
    """The keys each query reads, ``(B, H, Nq, Nk)``, in float64: distances of the codes written out."""
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    cq = codes(q.double(), threshold).double()
    ck = codes(repeat_kv(k, H).double(), threshold).double()
    dist = (cq[:, :, :, None, :] - ck[:, :, None, :, :]).abs().sum(-1)  # (B, H, Nq, Nk)
    pos = query_positions(Nq, Nk, q.device)[:, None]
    j = torch.arange(Nk, device=q.device)
    dist = dist.masked_fill(j == pos, -1.0).masked_fill(j > pos, float("inf"))
    rank_of = dist.sort(dim=-1, stable=True).indices.argsort(-1)
    return (j <= pos) & (rank_of < top_k)


def _reference(q, k, v, *, causal, mask, scale, top_k, threshold):
    kept = reference_mask(q.detach(), k.detach(), top_k=top_k, threshold=threshold)
    return materialised_attention(q, k, v, causal=False, mask=kept, scale=scale)


def _step(q, k, v, state, *, causal, mask, scale, top_k, threshold):

    def summarise(cache, done):
        with torch.no_grad():
            return (codes(cache.k[:, :, done:].detach(), threshold),)

    state = DigestKVCache.start(k, v, summarise) if state is None else state.append(k, v, summarise)
    return _attend(q, state.k, state.v, state.digest(0), scale, top_k, threshold), state


def _state_size(batch, heads, kv_heads, seq_len, head_dim, v_dim=None, **_):
    return batch * kv_heads * seq_len * (head_dim + (v_dim or head_dim) + padded_dim(head_dim))


register(MechanismSpec(
    name="adamas",
    family="training-free-sparse",
    papers=(PAPER,),
    patterns=frozenset({"causal-self"}),
    reference=_reference,
    fast={"gathered": adamas_gathered},
    step=_step,
    params={"top_k": Param(256, int, "keys each query reads (its own position included)", low=1),
            "threshold": Param(10.0, float, "code thresholds (-t, 0, t) on the unnormalised Hadamard transform",
                               low=0.0)},
    test_params={"top_k": 5, "threshold": 1.0},
    supports_mask=False,
    state_size=_state_size,
    complexity="O(N d) per query (2-bit codes) + O(top_k d)",
    summary="decode: each query reads its own key and the top-k - 1 keys whose 2-bit Hadamard codes are "
            "closest in Manhattan distance, attended exactly",
))
