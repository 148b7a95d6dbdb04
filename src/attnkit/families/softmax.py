"""Dense softmax attention and its score modifiers.

- softmax: Vaswani et al., "Attention Is All You Need" (2017); fast path SDPA,
  memory-efficient path the chunked online softmax of Rabe & Staats,
  "Self-attention Does Not Need O(n^2) Memory" (2021).
- alibi: Press et al., "Train Short, Test Long: Attention with Linear Biases..." (2022).
- softcap: tanh logit soft-capping (Gemma 2, 2024).
"""
from __future__ import annotations

from ..params import Param
from ..kernels.auto_sparse import mask_layout, not_boolean, too_dense
from ..kernels.block_sparse import block_sparse_attention
from ..kernels.dense import sdpa_attention
from ..scores.alibi import alibi_mod
from ..scores.softcap import softcap_mod
from ..builders.score_pipeline import register_score_mechanism

ATTENTION_IS_ALL = "Attention Is All You Need"
MEMORY_EFFICIENT = "Self-attention Does Not Need O(n^2) Memory"


def _sdpa(q, k, v, *, causal, mask, scale, dropout_p=0.0, **chunk_sizes_unused_by_sdpa):
    return sdpa_attention(q, k, v, causal=causal, mask=mask, scale=scale, dropout_p=dropout_p)


def _block_sparse_refuses(q, k, v, *, causal, mask, dropout_p=0.0, **_) -> str | None:
    if dropout_p:
        return "the block-sparse kernel applies no attention-weight dropout"
    return not_boolean(q, k, v, causal=causal, mask=mask)


def _block_sparse(q, k, v, *, causal, mask, scale, **chunk_sizes_unused):
    """Skips the tiles a boolean mask leaves empty (the default when the mask is sparse: kernels/auto_sparse.py)."""
    return block_sparse_attention(q, k, v, mask_layout(q, k, causal=causal, mask=mask), scale=scale)


register_score_mechanism(
    "softmax",
    papers=(ATTENTION_IS_ALL, MEMORY_EFFICIENT),
    extra_fast={"sdpa": _sdpa, "block_sparse": _block_sparse},
    default_forms=("block_sparse", "sdpa"),
    can_run={"block_sparse": _block_sparse_refuses},
    auto_when={"block_sparse": too_dense},
    dropout_forms=("sdpa",),
    summary="scaled dot-product attention; SDPA fast path, chunked O(N)-memory exact path",
)

register_score_mechanism(
    "alibi",
    papers=("Train Short, Test Long: Attention with Linear Biases Enables Input Length Extrapolation",),
    make_mod=lambda q, k, **_: alibi_mod(),
    mod_on_positions=True,
    summary="softmax with per-head linear distance penalties -m_h |i - j|",
)

register_score_mechanism(
    "softcap",
    papers=("Gemma 2: Improving Open Language Models at a Practical Size",),
    make_mod=lambda q, k, *, cap, **_: softcap_mod(cap),
    mod_on_positions=True,
    params={"cap": Param(50.0, float, 'soft cap c of c * tanh(s / c)', low=0, low_open=True)},
    summary="softmax over cap * tanh(s / cap)",
)
