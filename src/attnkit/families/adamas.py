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

Conventions, checked against the authors' code (their reference test
``_ref_self_approx_attention`` and their decode path): the transform is
unnormalised (their ``hadamard_transform`` is called without ``scale``, whose
default is 1.0); the codes are ``torch.bucketize(x H, (-10, 0, 10))``, i.e. the
number of thresholds strictly below the coordinate (a coordinate equal to a
threshold takes the lower code), as here; the distance is L1 over the codes and a
query reads its own (last) key plus the ``top_k - 1`` closest earlier keys. So
``t = threshold`` is in units of the unnormalised transform, and 10 is the authors'
value for head dimension 128, where a unit-variance vector's transformed
coordinates have standard deviation ``sqrt(128) ~ 11.3``; the same bucket shares
at head dimension ``d`` need ``t = 10 sqrt(d / 128)`` (7.1 at 64). Two details
differ: their ``pairwise_distance`` adds ``1e-6`` to every coordinate difference
(it only reorders equal distances) and their ``topk`` breaks ties arbitrarily,
while here ties of the integer distances go to the earlier key in every form;
a query with at most ``top_k`` keys in its past reads them all. The choice is not differentiable (gradients flow through
the exact attention over ``I``).

Forms: ``reference`` (codes and distances written out in float64, ranks from a
stable sort, the element mask) and ``gathered`` (keys' codes packed four to a
byte; each query builds a table of the distance of each of its four-code
groups to all 256 byte values, and one ``embedding_bag`` sums the tables at the
keys' bytes, ``P / 4`` look-ups per key; each query gathers its keys). The incremental state is a
:class:`~attnkit.state.DigestKVCache` holding the packed codes (``P / 4`` bytes
per key).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels.gathered_keys import gathered_attention
from ..kernels.positions import query_positions, repeat_kv
from ..params import Param
from ..reference import materialised_attention
from ..registry import MechanismSpec, register
from ..builders.kv_cache_step import read_every_key
from ..state import DigestKVCache

PAPER = "Adamas: Hadamard Sparse Attention for Efficient Long-Context Inference"


def padded_dim(d: int) -> int:
    """The power of two (at least 4, a byte of codes) the transform works in: ``d`` padded with zeros up to it."""
    return max(4, 1 << max(0, d - 1).bit_length())


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


def key_digest(k: torch.Tensor, threshold: float) -> torch.Tensor:
    """``(..., P / 4)`` uint8: the codes of ``k`` packed four to a byte (what a decode state keeps per key)."""
    c = codes(k, threshold).unflatten(-1, (-1, 4))
    return c[..., 0] | (c[..., 1] << 2) | (c[..., 2] << 4) | (c[..., 3] << 6)


def _distances(q_codes, key_bytes):
    """``(B, H, c, N)`` Manhattan distances of query codes ``(B, H, c, P)`` to packed key codes ``(B, Hkv, N, P/4)``:
    per query a table of the distance of each of its four-code groups to every byte value, summed at the keys'
    bytes by one ``embedding_bag`` (a key's bag: its ``P / 4`` table entries)."""
    B, H, c, P = q_codes.shape
    Hkv, N, G = key_bytes.shape[1], key_bytes.shape[2], H // key_bytes.shape[1]
    shifts = torch.arange(0, 8, 2, device=q_codes.device)
    byte_codes = (torch.arange(256, device=q_codes.device)[:, None] >> shifts) & 3  # (256, 4)
    groups = q_codes.unflatten(-1, (-1, 4))[..., None, :].to(torch.float32)
    table = (groups - byte_codes).abs().sum(-1)  # (B, H, c, P/4, 256): exact small integers
    # entry (query row, group i, byte value) sits at row (query row * P/4 + i) * 256 + byte of the stacked tables
    rows = torch.arange(B * H * c * P // 4, device=q_codes.device, dtype=torch.int32).view(B, Hkv, G * c, 1, P // 4)
    index = key_bytes.to(torch.int32)[:, :, None].add(rows * 256)  # (B, Hkv, G c, N, P/4); an int32 add is
    # vectorised, a uint8 + int32 add promoting element by element is ten times slower
    dist = F.embedding_bag(index.view(-1, P // 4), table.view(-1, 1), mode="sum")
    return dist.view(B, H, c, N)


def _chosen(q, key_bytes, kv_len, top_k, threshold, c0, c1):
    """Indices ``(B, H, c, K)`` and validity of the keys queries ``c0:c1`` read (distance ties: earlier key)."""
    dist = _distances(codes(q[:, :, c0:c1], threshold), key_bytes)
    pos = query_positions(q.shape[2], kv_len, q.device)[c0:c1]
    j = torch.arange(kv_len, device=q.device)
    order = dist.long() * kv_len + j  # smaller distance first, then the earlier key
    order = order.masked_fill(j == pos[:, None], -1).masked_fill(j > pos[:, None], torch.iinfo(torch.long).max)
    index = order.topk(min(top_k, kv_len), dim=-1, largest=False).indices
    return index, index <= pos[:, None]


def _attend(q, k, v, key_bytes, scale, top_k, threshold, budget=1 << 24):
    B, H, Nq, D = q.shape
    chunk = max(1, budget // (B * H * padded_dim(D) * max(1, k.shape[2])))
    with torch.no_grad():
        picks = [_chosen(q.detach(), key_bytes, k.shape[2], top_k, threshold, c0, min(Nq, c0 + chunk))
                 for c0 in range(0, Nq, chunk)]
    index, valid = (torch.cat(parts, dim=2) for parts in zip(*picks))
    return gathered_attention(q, k, v, index, valid, scale=scale)


def adamas_gathered(q, k, v, *, causal, mask, scale, top_k, threshold):
    return _attend(q, k, v, key_digest(k.detach(), threshold), scale, top_k, threshold)


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
            return (key_digest(cache.k[:, :, done:].detach(), threshold),)

    state = DigestKVCache.start(k, v, summarise) if state is None else state.append(k, v, summarise)
    return _attend(q, state.k, state.v, state.digest(0), scale, top_k, threshold), state


_step.read = read_every_key  # attnkit.capture: the step reads every key so far


def _state_size(batch, heads, kv_heads, seq_len, head_dim, v_dim=None, **_):
    return batch * kv_heads * seq_len * (head_dim + (v_dim or head_dim) + padded_dim(head_dim) // 4)


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
