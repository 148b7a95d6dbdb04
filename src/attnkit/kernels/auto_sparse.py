"""When a boolean mask is sparse enough, run it on the block-sparse kernel instead of SDPA.

SDPA with an explicit mask computes every score (a 256-token window at
N = 16384 costs as much as dense attention). ``softmax``'s default form asks
:func:`sparse_layout` first: for a boolean mask over at least ``MIN_PAIRS``
pairs whose non-empty tiles are at most ``MAX_TILE_DENSITY`` of all tiles, it
returns the block layout (the causal rule folded in) and the call goes to
:func:`attnkit.kernels.block_sparse.block_sparse_attention`. Dense and plain
causal calls (no mask) never get here: they stay on SDPA.
"""
from __future__ import annotations

from ..masks.base import causal_mask, tensor_mask
from ..masks.layout import BlockLayout, build_layout

MIN_PAIRS = 1 << 20
MAX_TILE_DENSITY = 0.5
BLOCK = 128


def sparse_layout(q, k, *, causal: bool, mask) -> BlockLayout | None:
    if mask is None or mask.dtype.is_floating_point or mask.dtype.is_complex:
        return None
    B, H, Nq, _ = q.shape
    Nk = k.shape[2]
    if Nq * Nk < MIN_PAIRS:
        return None
    m = tensor_mask(mask, Nq, Nk)
    if causal:
        m = m & causal_mask()
    layout = build_layout(m, batch=B, heads=H, q_len=Nq, kv_len=Nk, block_q=BLOCK, block_k=BLOCK, device=q.device)
    return layout if layout.tile_density <= MAX_TILE_DENSITY else None
