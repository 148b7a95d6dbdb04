"""Fixed factorised patterns: Sparse Transformer strided / fixed, S2-Attention shards.

- Child et al., "Generating Long Sequences with Sparse Transformers" (2019):
  *strided* (stride ``l``): the previous ``l`` positions plus every ``l``-th one
  before them, ``(i - j) mod l == 0``; *fixed* (stride ``l``, ``c`` summary
  cells): the query's own block of ``l`` plus the last ``c`` cells of every
  block, ``j mod l in [l - c, l)``. Both are the "merged head" form (one head
  attends to the union of the two factors).
- "Efficient LLM Training and Serving with Heterogeneous Context Sharding among
  Attention Heads" (S2-Attention): head ``h`` attends to the ``local`` most
  recent blocks of ``shard`` tokens plus a strided shard of blocks,
  ``(block + h * step) mod vert_stride == 0``, different per head so that the
  heads together cover the whole context (DKernel's local-stride pattern).
"""
from __future__ import annotations

import torch

from .base import MaskMod
from .window import _check_int, _distance_tiles


def periodic_tiles(lo, hi, period: int, r_lo, r_hi):
    """Does ``x mod period`` fall in ``[r_lo, r_hi]`` for some / every ``x`` in ``[lo, hi]``?"""
    width = hi - lo + 1
    a, b = lo.remainder(period), hi.remainder(period)
    whole = width >= period
    wrapped = ~whole & (a > b)
    straight = ~whole & ~wrapped
    covers_all = (r_lo == 0) & (r_hi == period - 1)
    any_ = whole | (wrapped & ((r_hi >= a) | (r_lo <= b))) | (straight & (a <= r_hi) & (b >= r_lo))
    all_ = ((whole | wrapped) & covers_all) | (straight & (r_lo <= a) & (b <= r_hi))
    return any_, all_


def strided(stride: int, causal: bool = True) -> MaskMod:
    """Sparse Transformer strided pattern: ``|i - j| <= stride`` or ``(i - j) mod stride == 0``."""
    _check_int("stride", stride, 1)
    right = 0 if causal else stride
    band = _distance_tiles(lambda h: stride, lambda h: right)

    def fn(b, h, q, kv):
        d = q - kv
        return ((d <= stride) & (d >= -right)) | (d.remainder(stride) == 0)

    def tiles(b, h, q_lo, q_hi, k_lo, k_hi):
        near_any, near_all = band(b, h, q_lo, q_hi, k_lo, k_hi)
        far_any, far_all = periodic_tiles(q_lo - k_hi, q_hi - k_lo, stride, 0, 0)
        return near_any | far_any, near_all | far_all

    return MaskMod(fn, tiles, f"strided({stride})")


def fixed(stride: int, summary: int = 1) -> MaskMod:
    """Sparse Transformer fixed pattern: own block of ``stride`` or one of the last ``summary`` cells of a block."""
    _check_int("stride", stride, 1)
    _check_int("summary", summary, 1)
    if summary > stride:
        raise ValueError(f"summary must be <= stride, got summary={summary}, stride={stride}")

    def fn(b, h, q, kv):
        return (q // stride == kv // stride) | (kv.remainder(stride) >= stride - summary)

    def tiles(b, h, q_lo, q_hi, k_lo, k_hi):
        qb_lo, qb_hi, kb_lo, kb_hi = q_lo // stride, q_hi // stride, k_lo // stride, k_hi // stride
        same_any = (qb_lo <= kb_hi) & (kb_lo <= qb_hi)
        same_all = (qb_lo == qb_hi) & (kb_lo == kb_hi) & (qb_lo == kb_lo)
        col_any, col_all = periodic_tiles(k_lo, k_hi, stride, stride - summary, stride - 1)
        return same_any | col_any, same_all | col_all

    return MaskMod(fn, tiles, f"fixed({stride},{summary})")


def s2_shards(heads: int, shard: int, local: int, vert_stride: int, causal: bool = True) -> MaskMod:
    """S2-Attention: ``local`` recent blocks of ``shard`` tokens + per-head strided blocks."""
    for name, value, low in (("shard", shard, 1), ("local", local, 1), ("vert_stride", vert_stride, 1)):
        _check_int(name, value, low)
    step = max(1, vert_stride // heads)
    offsets = torch.arange(heads, device="cpu") * step  # a small per-head table, moved per use
    right = 0 if causal else local - 1
    band = _distance_tiles(lambda h: local - 1, lambda h: right)

    def fn(b, h, q, kv):
        qb, kb = q // shard, kv // shard
        d = qb - kb
        near = (d <= local - 1) & (d >= -right)
        return near | ((kb + offsets.to(kv.device)[h]).remainder(vert_stride) == 0)

    def tiles(b, h, q_lo, q_hi, k_lo, k_hi):
        qb_lo, qb_hi, kb_lo, kb_hi = q_lo // shard, q_hi // shard, k_lo // shard, k_hi // shard
        near_any, near_all = band(b, h, qb_lo, qb_hi, kb_lo, kb_hi)
        off = offsets.to(k_lo.device)[h]
        far_any, far_all = periodic_tiles(kb_lo + off, kb_hi + off, vert_stride, 0, 0)
        return near_any | far_any, near_all | far_all

    return MaskMod(fn, tiles, f"s2_shards(shard={shard},local={local},stride={vert_stride})")
