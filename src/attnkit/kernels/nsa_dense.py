"""NSA's selection and sliding-window branches as one dense masked attention, for short sequences.

At a few hundred tokens the run-time block selection kernel
(:mod:`attnkit.kernels.selected_blocks`) spends its time sorting, gathering and
merging, not multiplying: a dense attention over all ``Nq * Nk`` pairs, masked
to the same keys, is cheaper there. This module computes exactly what the two
branches compute, each token's softmax over its selected blocks' keys and over
its last ``window`` keys, with :func:`torch.nn.functional.scaled_dot_product_attention`
and additive masks: the selection's built per block straight from the chosen
blocks (a block chosen twice is set twice, so the kernel's duplicate removal is
not needed) and spread over the keys, the window's one ``(Nq, Nk)`` matrix
shared by every batch row and head. Every
query sees at least itself in both (its own block is always selected), so no
row is empty. An additive mask cannot block a NaN score (NaN - inf is NaN), so
keys that are not all finite must take the kernels, which write -inf.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .positions import query_positions, repeat_kv


def dense_selection_and_window(q, k, v, blocks, valid, *, select_block: int, window: int, scale: float, k_win=None,
                               v_win=None):
    """``(o_slc, o_win)``, each ``(B, H, Nq, Dv)``: softmax attention of ``q`` over ``k, v (B, Hkv, Nk, .)``
    restricted to the chosen blocks of ``select_block`` keys (``blocks, valid (B, Hkv, Nq, n)``: one row per
    token and kv group, slots with ``valid`` False unused, a block chosen twice counted once; causal) and over
    ``k_win, v_win`` (default ``k, v``) restricted to the last ``window`` keys of each query."""
    k_win, v_win = (k, v) if k_win is None else (k_win, v_win)
    B, H, Nq, _ = q.shape
    Nk = k.shape[2]
    qpos = query_positions(Nq, Nk, q.device)[:, None]
    kpos = torch.arange(Nk, device=q.device)
    gqa = k.shape[1] != H
    bias = selection_bias(blocks, valid, select_block, Nk, H, q.dtype)
    o_slc = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale, enable_gqa=gqa)
    recent = additive((kpos <= qpos) & (kpos > qpos - window), q.dtype)
    o_win = F.scaled_dot_product_attention(q, k_win, v_win, attn_mask=recent, scale=scale, enable_gqa=gqa)
    return o_slc, o_win


def selection_bias(blocks, valid, select_block: int, kv_len: int, heads: int, dtype) -> torch.Tensor:
    """The chosen blocks as an additive mask ``(B, heads, Nq, Nk)``: 0 on their keys at or before the query,
    ``-inf`` elsewhere (per block, then spread over the keys in one pass with the causal rule)."""
    B, G, Nq, _ = blocks.shape
    nk = -(-kv_len // select_block)
    device = blocks.device
    hit = torch.zeros(B, G, Nq, nk + 1, dtype=torch.bool, device=device)
    hit.scatter_(3, torch.where(valid, blocks, nk), True)
    kpos = torch.arange(nk * select_block, device=device)
    causal = additive(kpos <= query_positions(Nq, kv_len, device)[:, None], dtype)
    bias = additive(hit[..., :nk], dtype)[..., None] + causal.view(Nq, nk, select_block)
    return repeat_kv(bias.view(B, G, Nq, nk * select_block)[..., :kv_len], heads)


def additive(allowed: torch.Tensor, dtype) -> torch.Tensor:
    """A boolean mask as an additive one: 0 where allowed, ``-inf`` elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))
