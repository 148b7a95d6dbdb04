"""Attention Buckets: softmax attention run with several RoPE bases in parallel, outputs averaged.

Chen et al., "Fortify the Shortest Stave in Attention: Enhancing Context Awareness of Large
Language Models for Effective Tool Use" (2024). Rotary embedding with base ``b`` makes the
attention a token receives oscillate with its distance to the query (the "attention waveform"),
so some positions fall into troughs; a different base puts its troughs elsewhere. Attention
Buckets runs the input through parallel processes, one per base ``b_1 .. b_n``, so that one
process's peak covers another's trough::

    R_b(x, p)  = x rotated pairwise by angles p * b^(-2i/D)        (RoPE with base b)
    out_b      = softmax(scale R_b(q_i, p_i) . R_b(k_j, j) + mask) v
    out        = (1 / n) sum_b out_b

with query ``i`` at position ``p_i = Nk - Nq + i`` (attnkit's bottom-right alignment, so a KV
cache of unrotated keys decodes exactly). Reading: the paper runs the whole model once per base
and combines the processes' outputs; this mechanism is the same union inside one attention call
(equal weights, per layer). The attention weights are the mean of the per-base weights.

Forms: ``reference`` (each base's weights materialised in float64, averaged) and ``sdpa`` (the
bases stacked along the batch, one SDPA call, ``O(n)`` the work of softmax attention).
"""
from __future__ import annotations

import torch

from ..builders.kv_cache_step import kv_cache_step
from ..kernels.dense import sdpa_attention
from ..kernels.positions import query_positions, repeat_kv
from ..params import Param
from ..positional.rope import RoPE
from ..reference import materialised_weights
from ..registry import MechanismSpec, dense_flops, register

PAPER = ("Fortify the Shortest Stave in Attention: Enhancing Context Awareness of Large Language Models for "
         "Effective Tool Use")


def rotated(q, k, bases):
    """``(q_b, k_b)`` for each base: q and k rotated by RoPE with that base at their positions."""
    if q.shape[-1] % 2:
        raise ValueError(f"attention_buckets rotates pairs of dimensions: q and k need an even head_dim, "
                         f"got {q.shape[-1]}")
    q_pos = query_positions(q.shape[2], k.shape[2], q.device)
    k_pos = torch.arange(k.shape[2], device=k.device)
    out = []
    for base in bases:
        rope = RoPE(q.shape[-1], base=float(base))
        out.append((rope.rotate(q, q_pos), rope.rotate(k, k_pos)))
    return out


def bucket_weights(q, k, *, causal, mask, scale, bases):
    """The mean over bases of the softmax weights ``(B, H, Nq, Nk)``."""
    per_base = [materialised_weights(qb, kb, causal=causal, mask=mask, scale=scale) for qb, kb in rotated(q, k, bases)]
    return torch.stack(per_base).mean(dim=0)


def _reference(q, k, v, *, causal, mask, scale, bases):
    return bucket_weights(q, k, causal=causal, mask=mask, scale=scale, bases=bases) @ repeat_kv(v, q.shape[1])


def _sdpa(q, k, v, *, causal, mask, scale, bases):
    n, B = len(bases), q.shape[0]
    pairs = rotated(q, k, bases)
    qs = torch.cat([qb for qb, _ in pairs])
    ks = torch.cat([kb for _, kb in pairs])
    vs = v.repeat(n, 1, 1, 1)
    if mask is not None and mask.shape[0] != 1:
        mask = mask.repeat(n, 1, 1, 1)
    out = sdpa_attention(qs, ks, vs, causal=causal, mask=mask, scale=scale)
    return out.view(n, B, *out.shape[1:]).mean(dim=0)


def _weights(q, k, v, *, causal, mask, scale, bases):
    return bucket_weights(q, k, causal=causal, mask=mask, scale=scale, bases=bases)


def _flops(batch, heads, q_len, kv_len, head_dim, causal, bases=(10000.0, 20000.0, 40000.0), **_):
    return len(bases) * dense_flops(batch, heads, q_len, kv_len, head_dim, causal)


register(
    MechanismSpec(
        name="attention_buckets",
        family="softmax",
        papers=(PAPER,),
        patterns=frozenset({"causal-self", "noncausal-self", "causal-cross"}),
        reference=_reference,
        fast={"sdpa": _sdpa},
        step=kv_cache_step(_sdpa),
        params={"bases": Param((10000.0, 20000.0, 40000.0), tuple, "the RoPE bases of the parallel branches "
                               "(one softmax attention each, outputs averaged); the default is an example, not the paper's searched set", item=float, low=1, low_open=True)},
        flops=_flops,
        summary="mean of softmax attentions whose q, k are rotated by RoPE with different bases, so one base's "
                "attention troughs are filled by another's peaks",
        test_params={"bases": (10000.0, 500.0)},
        weights=_weights,
    )
)
