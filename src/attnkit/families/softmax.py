"""Dense softmax attention and its score modifiers.

- softmax: Vaswani et al., "Attention Is All You Need" (2017); fast path SDPA,
  memory-efficient path the chunked online softmax of Rabe & Staats,
  "Self-attention Does Not Need O(n^2) Memory" (2021).
- alibi: Press et al., "Train Short, Test Long: Attention with Linear Biases..." (2022).
- softcap: tanh logit soft-capping (Gemma 2, 2024).
"""
from __future__ import annotations

from ..params import Param
from ..kernels.auto_sparse import sparse_layout
from ..kernels.block_sparse import block_sparse_attention
from ..kernels.dense import sdpa_attention
from ..scores.alibi import alibi_mod
from ..scores.softcap import softcap_mod
from .score_pipeline import register_score_mechanism

ATTENTION_IS_ALL = "Attention Is All You Need"
MEMORY_EFFICIENT = "Self-attention Does Not Need O(n^2) Memory"


def _sdpa(q, k, v, *, causal, mask, scale, dropout_p=0.0, **chunk_sizes_unused_by_sdpa):
    layout = None if dropout_p else sparse_layout(q, k, causal=causal, mask=mask)  # skip a sparse mask's empty tiles
    if layout is not None:
        return block_sparse_attention(q, k, v, layout, scale=scale)
    return sdpa_attention(q, k, v, causal=causal, mask=mask, scale=scale, dropout_p=dropout_p)


register_score_mechanism(
    "softmax",
    papers=(ATTENTION_IS_ALL, MEMORY_EFFICIENT),
    extra_fast={"sdpa": _sdpa},
    dropout_forms=("sdpa",),
    summary="scaled dot-product attention; SDPA fast path, chunked O(N)-memory exact path",
)

register_score_mechanism(
    "alibi",
    papers=("Train Short, Test Long: Attention with Linear Biases Enables Input Length Extrapolation",),
    make_mod=lambda q, k, **_: alibi_mod(),
    summary="softmax with per-head linear distance penalties -m_h |i - j|",
)

register_score_mechanism(
    "softcap",
    papers=("Gemma 2: Improving Open Language Models at a Practical Size",),
    make_mod=lambda q, k, *, cap, **_: softcap_mod(cap),
    params={"cap": Param(50.0, float, 'soft cap c of c * tanh(s / c)', low=0, low_open=True)},
    summary="softmax over cap * tanh(s / cap)",
)
