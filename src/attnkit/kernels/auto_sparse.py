"""Softmax attention under a boolean mask on the block-sparse kernel: the layout, and when it pays off.

SDPA with an explicit mask computes every score (a 256-token window at
N = 16384 costs as much as dense attention). :func:`mask_layout` builds the
block layout of a call's boolean mask (the causal rule folded in) for
:func:`attnkit.kernels.block_sparse.block_sparse_attention`; :func:`too_dense`
says why skipping empty tiles would not pay off: the mask covers fewer than
``MIN_PAIRS`` pairs, or more than ``MAX_TILE_DENSITY`` of its tiles are non-empty.
``softmax`` runs its ``block_sparse`` form by default only when neither holds.
"""
from __future__ import annotations

import torch

from ..masks.base import causal_mask, full_mask, tensor_mask
from ..masks.layout import BlockLayout, build_layout

MIN_PAIRS = 1 << 20
MAX_TILE_DENSITY = 0.5
BLOCK = 128


def mask_layout(q, k, *, causal: bool, mask) -> BlockLayout:
    """The ``BLOCK x BLOCK`` tile layout of a boolean ``mask`` (or None) and the causal rule."""
    B, H, Nq, _ = q.shape
    Nk = k.shape[2]
    m = tensor_mask(mask, Nq, Nk) if mask is not None else full_mask()
    if causal:
        m = m & causal_mask()
    return build_layout(m, batch=B, heads=H, q_len=Nq, kv_len=Nk, block_q=BLOCK, block_k=BLOCK, device=q.device)


def not_boolean(q, k, v, *, causal: bool, mask, **_) -> str | None:
    """Why a block layout cannot hold this call's mask (None if it can)."""
    if mask is not None and mask.dtype != torch.bool:
        return f"an additive {mask.dtype} mask has no block layout (it needs a boolean mask)"
    return None


def too_dense(q, k, v, *, causal: bool, mask, **_) -> str | None:
    """Why skipping the empty tiles of this call's mask would not pay off (None if it would)."""
    if mask is None:
        return "no mask: no tiles to skip"
    reason = not_boolean(q, k, v, causal=causal, mask=mask)
    if reason is not None:
        return reason
    pairs = q.shape[2] * k.shape[2]
    if pairs < MIN_PAIRS:
        return f"{pairs} pairs < {MIN_PAIRS}: too small to gain from skipping tiles"
    density = mask_layout(q, k, causal=causal, mask=mask).tile_density
    if density > MAX_TILE_DENSITY:
        return f"{density:.0%} of the mask's tiles are non-empty (> {MAX_TILE_DENSITY:.0%})"
    return None
