"""Work plan of the block-sparse kernel: items grouped into batched steps.

An *item* is one block of queries and the key tiles it visits: for all heads
at once when the layout is shared by heads (then a GQA group shares its
gathered keys), for one head when the layout differs per head. Items are
sorted by tile count and cut into groups that fit a budget of score elements,
so each step is one batched matmul; shorter rows in a group are padded with
a dummy tile whose mask is all-false. A row longer than the budget is swept in
chunks of tiles (online softmax).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..masks.layout import EMPTY, BlockLayout


@dataclass
class Group:
    q_index: torch.Tensor  # (R, hq): rows of the (B*H*nq, bq, D) query blocks
    kv_index: torch.Tensor  # (R, hk, T): rows of the (B*Hkv*nk, bk, D) key/value blocks
    mask_index: torch.Tensor | None  # (R, T) into layout.table; None when every tile is full
    partial_slots: tuple[int, ...]  # tile slots where some row's tile is not full (only they get the mask)
    q_block: torch.Tensor  # (R,) query block number (for positions)
    tiles: torch.Tensor  # (R, T) key block numbers (for positions)
    chunk: int  # tiles per online-softmax step


def plan_groups(layout: BlockLayout, B: int, H: int, Hkv: int, hq: int, budget: int) -> list[Group]:
    key = (B, H, Hkv, hq, budget)
    if key not in layout.cache:
        layout.cache[key] = _plan(layout, B, H, Hkv, hq, budget)
    return layout.cache[key]


def _plan(layout: BlockLayout, B, H, Hkv, hq, budget) -> list[Group]:
    Bm, Hm, nq, nk = layout.kind.shape
    bq, bk = layout.block_q, layout.block_k
    kind = layout.kind.expand(B, Hm, nq, nk)
    table_index = layout.table_index.expand(B, Hm, nq, nk)
    active = kind != EMPTY
    counts = active.sum(dim=-1).flatten()  # per (b, hm, qi)
    starts = counts.cumsum(0) - counts
    tile_of = active.nonzero()[:, 3]  # tiles in (b, hm, qi, ki) order
    items = (counts > 0).nonzero().flatten()
    order = torch.argsort(counts[items], stable=True)
    items = items[order]
    cnt = counts[items].tolist()
    unit = hq * bq * bk
    chunk = max(1, budget // unit)
    groups, i = [], 0
    while i < len(items):
        r = max(1, budget // (unit * min(cnt[i], chunk)))
        r = max(1, budget // (unit * min(cnt[min(i + r, len(items)) - 1], chunk)))
        sel = items[i : i + r]
        T = cnt[min(i + r, len(items)) - 1]
        groups.append(_group(sel, counts, starts, tile_of, table_index, T, chunk, Hm, nq, nk, H, Hkv))
        i += r
    return groups


def _group(sel, counts, starts, tile_of, table_index, T, chunk, Hm, nq, nk, H, Hkv) -> Group:
    qi = sel % nq
    hm = (sel // nq) % Hm
    b = sel // (nq * Hm)
    slots = torch.arange(T, device=sel.device)
    valid = slots[None, :] < counts[sel][:, None]
    pos = (starts[sel][:, None] + slots[None, :]).clamp(max=tile_of.numel() - 1)
    tiles = torch.where(valid, tile_of[pos], 0)
    mask_index = torch.where(valid, table_index[b[:, None], hm[:, None], qi[:, None], tiles], 1)
    if Hm > 1:  # one head per item
        q_index = ((b * H + hm) * nq + qi)[:, None]
        kv_heads = (hm // (H // Hkv))[:, None]
    else:  # every head in one item
        heads = torch.arange(H, device=sel.device)
        q_index = (b[:, None] * H + heads[None, :]) * nq + qi[:, None]
        kv_heads = torch.arange(Hkv, device=sel.device)[None, :]
    kv_index = ((b[:, None] * Hkv + kv_heads) * nk)[:, :, None] + tiles[:, None, :]
    partial_slots = tuple((mask_index != 0).any(dim=0).nonzero().flatten().tolist())
    return Group(q_index, kv_index, mask_index if partial_slots else None, partial_slots, qi, tiles, chunk)
