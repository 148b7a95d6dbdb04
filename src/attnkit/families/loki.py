"""Loki: low-rank keys choose the keys a decode query reads (Singhania et al., "Loki: Low-Rank Keys for
Efficient Sparse Attention", NeurIPS 2024).

Keys of a trained model lie close to a low-dimensional subspace. With ``P``
the principal directions of a head's keys (computed once, offline, from
calibration keys: :func:`loki_components`) and ``P_r`` its first ``r = rank``
columns, a query scores every cached key in the subspace, keeps the
``top_k`` best and attends exactly to them::

    s~_j = (q P_r) . (k_j P_r)                      j <= position of q
    I    = Topk_j(s~_j, top_k)
    out  = softmax(q K[I]^T / sqrt(d)) V[I]

The cache is not shrunk: it keeps every key and value, plus the projected keys
``K P_r`` that the scoring reads (``r / d`` of the keys' size).

Conventions: ``components`` is ``(Hkv, D, D)`` with orthonormal columns in
decreasing order of variance (a kv head's query heads share its basis); Loki's
keys are projected as they are stored (post-rotary in a RoPE model: what the
cache holds); the reference breaks ties toward the earlier key, the fast forms
take ``topk``'s choice (exact ties of real scores do not occur in practice); a query with fewer than ``top_k``
keys in its past reads them all. Scores in the input dtype; the choice is not
differentiable (gradients flow through the exact attention over ``I``).

Forms: ``reference`` (projector ``P_r P_r^T`` applied in float64, ranks from a
sort, the element mask) and ``gathered`` (each query reads only its ``top_k``
keys and values, every head at once, in chunks of queries:
:func:`~attnkit.kernels.gathered_keys.gathered_attention`, ``O(N d r + N top_k d)``);
a decode step without gradients on the CPU reads its keys without copying them
(:func:`~attnkit.kernels.gathered_keys.decode_key_attention`).
The incremental state is a :class:`~attnkit.state.DigestKVCache` with the
projected keys, each key projected once, when it is appended.
"""
from __future__ import annotations

import torch

from ..kernels.gathered_keys import decode_key_attention, gathered_attention, reads_in_place
from ..kernels.positions import query_positions, repeat_kv
from ..params import Param, TensorInput
from ..reference import materialised_attention
from ..registry import MechanismSpec, register
from ..builders.kv_cache_step import read_every_key
from ..state import DigestKVCache
from ..validation import check_tensor

PAPER = "Loki: Low-Rank Keys for Efficient Sparse Attention"


def loki_components(keys: torch.Tensor) -> torch.Tensor:
    """``(Hkv, D, D)``: per kv head, the principal directions of calibration ``keys (B, Hkv, N, D)`` (centred
    covariance, eigenvectors by decreasing eigenvalue)."""
    x = keys.transpose(0, 1).flatten(1, 2).double()  # (Hkv, B N, D)
    x = x - x.mean(1, keepdim=True)
    values, vectors = torch.linalg.eigh(x.transpose(-1, -2) @ x)
    return vectors.flip(-1).to(keys.dtype)


def _basis(k, components, rank):
    Hkv, D = k.shape[1], k.shape[3]
    check_tensor("components", components, (Hkv, D, D), k, what="(kv_heads, head_dim, head_dim) principal directions")
    if rank > D:
        raise ValueError(f"rank must be <= head_dim={D}, got {rank}")
    return components[:, :, :rank]


def _project(x, basis):
    """``x (B, Hkv or H, N, D) @ P_r`` of each head's kv head: ``(B, heads, N, r)``."""
    return x @ repeat_kv(basis[None], x.shape[1])


def _grouped_scores(q_low, low_keys):
    """``(B, H, c, N)``: each query head's low-rank queries against its kv head's low-rank keys (no key copies)."""
    B, H, c, r = q_low.shape
    Hkv = low_keys.shape[1]
    return (q_low.reshape(B, Hkv, H // Hkv * c, r) @ low_keys.transpose(-1, -2)).view(B, H, c, -1)


def _chosen(q, low_keys, basis, kv_len, top_k, c0, c1):
    """Indices ``(B, H, c, K)`` and validity of the keys queries ``c0:c1`` read."""
    approx = _grouped_scores(_project(q[:, :, c0:c1], basis), low_keys)
    first = kv_len - q.shape[2] + c0  # the position of the chunk's first query
    if first < kv_len - 1:  # some query has later keys: they are not its past
        pos = query_positions(q.shape[2], kv_len, q.device)[c0:c1]
        approx = approx.masked_fill(torch.arange(kv_len, device=q.device) > pos[:, None], float("-inf"))
    score, index = approx.topk(min(top_k, kv_len), dim=-1, sorted=False)
    if first + 1 >= top_k:  # every query has at least top_k keys: all chosen are past
        return index, torch.ones_like(index, dtype=torch.bool)
    return index, score > float("-inf")


def _attend(q, k, v, low_keys, basis, scale, top_k, chunk=1024):
    Nq = q.shape[2]
    if Nq == 1 and k.shape[2] >= top_k and reads_in_place(q, k, v):  # a decode step: its keys read in place
        with torch.no_grad():
            index, _ = _chosen(q, low_keys, basis, k.shape[2], top_k, 0, 1)
        return decode_key_attention(q, k, v, index[:, :, 0], scale=scale)
    with torch.no_grad():
        picks = [_chosen(q.detach(), low_keys, basis, k.shape[2], top_k, c0, min(Nq, c0 + chunk))
                 for c0 in range(0, Nq, chunk)]
    index, valid = (torch.cat(parts, dim=2) for parts in zip(*picks))
    return gathered_attention(q, k, v, index, valid, scale=scale)


def loki_gathered(q, k, v, *, causal, mask, scale, components, rank, top_k):
    basis = _basis(k, components, rank).detach()
    with torch.no_grad():
        low_keys = _project(k.detach(), basis)
    return _attend(q, k, v, low_keys, basis, scale, top_k)


def reference_mask(q, k, components, *, rank, top_k) -> torch.Tensor:
    """The keys each query reads, ``(B, H, Nq, Nk)``, in float64: scores through the projector ``P_r P_r^T``."""
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    P = components.double()[:, :, :rank]
    projector = repeat_kv((P @ P.transpose(-1, -2))[None], H)  # (1, H, D, D)
    approx = q.double() @ projector @ repeat_kv(k, H).double().transpose(-1, -2)
    past = torch.arange(Nk, device=q.device) <= query_positions(Nq, Nk, q.device)[:, None]
    rank_of = approx.masked_fill(~past, float("-inf")).sort(dim=-1, descending=True, stable=True).indices.argsort(-1)
    return past & (rank_of < top_k)


def _reference(q, k, v, *, causal, mask, scale, components, rank, top_k):
    _basis(k, components, rank)
    kept = reference_mask(q.detach(), k.detach(), components.detach(), rank=rank, top_k=top_k)
    return materialised_attention(q, k, v, causal=False, mask=kept, scale=scale)


def _step(q, k, v, state, *, causal, mask, scale, components, rank, top_k):
    basis = _basis(k, components, rank).detach()

    def summarise(cache, done):
        with torch.no_grad():
            return (_project(cache.k[:, :, done:].detach(), basis),)

    state = DigestKVCache.start(k, v, summarise) if state is None else state.append(k, v, summarise)
    return _attend(q, state.k, state.v, state.digest(0), basis, scale, top_k), state


_step.read = read_every_key  # attnkit.capture: the step reads every key so far


def _state_size(batch, heads, kv_heads, seq_len, head_dim, v_dim=None, *, rank=16, **_):
    return batch * kv_heads * seq_len * (head_dim + (v_dim or head_dim) + rank)


def _inputs(q, k, v, generator):
    Hkv, D = k.shape[1], k.shape[3]
    basis = torch.linalg.qr(torch.randn(Hkv, D, D, generator=generator, dtype=torch.float64)).Q
    return {"components": basis.to(q.dtype)}


register(MechanismSpec(
    name="loki",
    family="training-free-sparse",
    papers=(PAPER,),
    patterns=frozenset({"causal-self"}),
    reference=_reference,
    fast={"gathered": loki_gathered},
    step=_step,
    params={"rank": Param(16, int, "dimensions of the key subspace the scores use", low=1),
            "top_k": Param(256, int, "keys each query reads", low=1)},
    inputs={"components": TensorInput("(Hkv, D, D)", "per kv head, orthonormal principal directions of the keys, "
                                                       "by decreasing variance (loki_components)")},
    tensor_inputs=_inputs,
    test_params={"rank": 4, "top_k": 5},
    supports_mask=False,
    state_size=_state_size,
    complexity="O(N r + top_k d) per query",
    summary="decode: each query reads its top-k keys by low-rank (PCA) scores, attended exactly",
))
