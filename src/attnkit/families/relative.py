"""Softmax with learned relative-position terms: T5 buckets and Shaw / Music Transformer.

- ``t5``: Raffel et al., "Exploring the Limits of Transfer Learning with a
  Unified Text-to-Text Transformer" (2020): a learned bias per head and
  log-spaced distance bucket (:mod:`attnkit.scores.t5_bias`). Tensor input
  ``table`` ``(heads, num_buckets)``; buckets are bidirectional when
  ``causal=False``.
- ``shaw``: Shaw et al., "Self-Attention with Relative Position
  Representations" (2018), with per-head tables and the skewing trick of Huang
  et al., "Music Transformer" (2018) (:mod:`attnkit.scores.relative`). Tensor
  input ``table`` ``(heads, 2K + 1, head_dim)``. Fast forms: ``skew`` (Music
  Transformer: ``S_rel`` by one skewed product, then SDPA with it as a bias;
  O(L^2) memory instead of O(L^2 D)) and ``chunked`` (the skew per tile:
  linear memory). The reference gathers ``a_ij`` for every pair, as Shaw et
  al. write it. Only the key-side term is implemented, as in Music
  Transformer (Shaw et al. found the value-side term unnecessary).
"""
from __future__ import annotations

import torch

from ..params import Param, TensorInput
from ..kernels.dense import sdpa_attention
from ..kernels.positions import query_positions
from ..scores.relative import shaw_gather_mod, shaw_skew_mod
from ..scores.t5_bias import t5_bias_mod
from ..validation import check_int, check_tensor
from ..builders.score_pipeline import register_score_mechanism

T5 = "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer"
SHAW = "Self-Attention with Relative Position Representations"
MUSIC = "Music Transformer"


def _t5_mod(q, k, *, causal, table, max_distance, **_):
    check_int("max_distance", max_distance, minimum=2)
    if not isinstance(table, torch.Tensor) or table.ndim != 2:
        raise ValueError("table must be a tensor of shape (heads, num_buckets)")
    check_tensor("table", table, (q.shape[1], table.shape[1]), q)
    if table.shape[1] < 4:
        raise ValueError(f"table must have at least 4 buckets, got {table.shape[1]}")
    return t5_bias_mod(table, bidirectional=not causal, max_distance=max_distance)


register_score_mechanism(
    "t5",
    papers=(T5,),
    make_mod=_t5_mod,
    mod_on_positions=True,
    params={"max_distance": Param(128, int, 'distance beyond which buckets stop growing', low=2)},
    inputs={"table": TensorInput("(H, buckets)", "learned bias per head and relative-distance bucket (at least 4 buckets)")},
    tensor_inputs=lambda q, k, v, g: {"table": torch.randn(q.shape[1], 32, generator=g, dtype=q.dtype)},
    summary="softmax + learned per-head bias of log-bucketed relative distance",
    test_params={"max_distance": 20},
)


def _check_shaw_table(q, table):
    if not isinstance(table, torch.Tensor) or table.ndim != 3 or table.shape[1] % 2 == 0:
        raise ValueError("table must be a tensor of shape (heads, 2K + 1, head_dim) for clip distance K")
    check_tensor("table", table, (q.shape[1], table.shape[1], q.shape[3]), q)


def _shaw_mod(make):
    def build(q, k, *, scale, table, **_):
        _check_shaw_table(q, table)
        return make(q, table, scale=scale, offset=k.shape[2] - q.shape[2])

    return build


def _skew_form(q, k, v, *, causal, mask, scale, table, q_chunk=None, kv_chunk=None):
    """Music Transformer's form: S_rel for all pairs by one skew, added to SDPA as a bias."""
    _check_shaw_table(q, table)
    Nq, Nk = q.shape[2], k.shape[2]
    mod = shaw_skew_mod(q, table, scale=scale, offset=Nk - Nq)
    zeros = q.new_zeros(q.shape[0], q.shape[1], Nq, Nk)
    bias = mod(zeros, query_positions(Nq, Nk, q.device), torch.arange(Nk, device=q.device))
    if mask is not None:
        bias = bias.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else bias + mask
    return sdpa_attention(q, k, v, causal=causal, mask=bias, scale=scale)


register_score_mechanism(
    "shaw",
    papers=(SHAW, MUSIC),
    make_mod=_shaw_mod(shaw_skew_mod),
    make_reference_mod=_shaw_mod(shaw_gather_mod),
    inputs={"table": TensorInput("(H, 2K + 1, D)", "learned embeddings of the relative distances clipped to -K..K, per head")},
    tensor_inputs=lambda q, k, v, g: {
        "table": 0.5 * torch.randn(q.shape[1], 2 * 16 + 1, q.shape[3], generator=g, dtype=q.dtype)
    },
    extra_fast={"skew": _skew_form},
    summary="softmax + q . E[clip(j - i)] relative embeddings; Music Transformer skew, linear-memory chunked skew",
)
