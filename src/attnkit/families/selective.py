"""Selective self-attention: query- and position-dependent temperature, value temperature.

Zhang et al., "Selective Attention: Enhancing Transformer through Principled
Context Control" (NeurIPS 2024). Each query is scaled by an inverse temperature
that depends on its token and on its position, so a query can choose how
sparse its attention map is, and values are scaled by a temperature that lets
the layer suppress irrelevant tokens:

    q~_i = tau_i q_i,   tau_i = 1 + query_temp_i + position_scale_h * log(1 + pos_i)
    v~_j = value_temp_j v_j
    out_i = softmax_j(q~_i . k_j * scale) v~_j

The token-dependent parts come from the layer's own projections of the token
embedding (the paper's weight-shared ``tanh`` heads), which attention does not
see, so they are inputs here: ``query_temp`` ``(B, heads, Nq)``, ``value_temp``
``(B, kv_heads, Nk)`` and the per-head ``position_scale`` ``(heads,)`` (the
paper's sigmoid of a learned scalar). Missing inputs contribute nothing.
Positions are absolute (bottom-right aligned) and continue across incremental
calls. Fast forms: SDPA on the rescaled q and v, and the chunked kernel.
"""
from __future__ import annotations

import torch

from ..params import TensorInput
from ..kernels.dense import sdpa_attention
from ..validation import check_tensor
from ..builders.score_pipeline import register_score_mechanism


def selective_prepare(q, k, v, *, scale=None, query_temp=None, value_temp=None, position_scale=None, **_):
    B, H, Nq, _ = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    check_tensor("query_temp", query_temp, (B, H, Nq), q, optional=True)
    check_tensor("value_temp", value_temp, (B, Hkv, Nk), q, optional=True)
    check_tensor("position_scale", position_scale, (H,), q, optional=True)
    tau = torch.ones(B, H, Nq, dtype=q.dtype, device=q.device)
    if query_temp is not None:
        tau = tau + query_temp
    if position_scale is not None:
        pos = torch.arange(Nk - Nq, Nk, device=q.device).clamp_min(0).to(q.dtype)
        tau = tau + position_scale[:, None] * torch.log1p(pos)[None, :]
    q = q * tau[..., None]
    if value_temp is not None:
        v = v * value_temp[..., None]
    return q, k, v


def _sdpa(q, k, v, *, causal, mask, scale, q_chunk=None, kv_chunk=None, **temps):
    q, k, v = selective_prepare(q, k, v, **temps)
    return sdpa_attention(q, k, v, causal=causal, mask=mask, scale=scale)


def _cache_scaled_values(step):
    """The cache holds temperature-scaled values, so later calls need only the new tokens' temperatures."""

    def scaled(q, k, v, state, *, value_temp=None, **kw):
        check_tensor("value_temp", value_temp, (*k.shape[:3],), q, optional=True)
        if value_temp is not None:
            v = v * value_temp[..., None]
        return step(q, k, v, state, value_temp=None, **kw)

    return scaled


def _inputs(q, k, v, g):
    B, H, Nq, _ = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    return {
        "query_temp": torch.tanh(torch.randn(B, H, Nq, generator=g, dtype=q.dtype)),
        "value_temp": 1.0 + 0.5 * torch.tanh(torch.randn(B, Hkv, Nk, generator=g, dtype=q.dtype)),
        "position_scale": torch.sigmoid(torch.randn(H, generator=g, dtype=q.dtype)),
    }


register_score_mechanism(
    "selective",
    papers=("Selective Attention: Enhancing Transformer through Principled Context Control",),
    prepare=selective_prepare,
    key_weight=lambda q, k, v, *, value_temp=None, **_: value_temp,
    inputs={"query_temp": TensorInput("(B, H, Nq)", "per-query temperatures; 1 when absent", required=False),
            "value_temp": TensorInput("(B, Hkv, Nk)", "per-token value temperatures; 1 when absent", required=False),
            "position_scale": TensorInput("(H,)", "weight of the log-position term of the query temperature; 0 when absent",
                                          required=False)},
    tensor_inputs=_inputs,
    tensor_inputs_per_token=("query_temp", "value_temp"),
    extra_fast={"sdpa": _sdpa},
    wrap_step=_cache_scaled_values,
    summary="softmax with per-query (token + log-position) temperature and per-token value temperature",
)
