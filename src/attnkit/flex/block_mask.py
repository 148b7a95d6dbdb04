"""FlexAttention masks as attnkit block layouts.

Two ways in, with FlexAttention's meaning of indices (``q_idx`` is the query's
row ``0 .. Q_LEN - 1``, not attnkit's bottom-right position):

- a ``mask_mod(b, h, q_idx, kv_idx) -> bool`` callable: attnkit calls it with
  broadcastable integer tensors (``b`` of shape ``(B, 1, 1, 1)``, ``h``
  ``(1, H, 1, 1)``, a block of query rows ``(1, 1, rows, 1)``, every key
  ``(1, 1, 1, KV_LEN)``), one block row at a time, so the layout is per batch
  or per head only where the mask's result depends on ``b`` or ``h``;
- a ``torch.nn.attention.flex_attention.BlockMask`` (``create_block_mask``):
  its block lists are read as they are (partial blocks ``kv_indices``, full
  blocks ``full_kv_indices``, every other block skipped) and its ``mask_mod``
  is evaluated on the partial blocks only, which is what compiled
  FlexAttention computes.
"""
from __future__ import annotations

import torch

from ..masks.base import MaskMod
from ..masks.layout import EMPTY, FULL, PARTIAL, BlockLayout, build_layout, layout_from_kinds


def _flex_mask(mask_mod, offset: int) -> MaskMod:
    """``mask_mod`` on attnkit's query positions (``offset + row``), its result checked."""

    def fn(b, h, q, kv):
        out = mask_mod(b, h, q - offset, kv)
        if not isinstance(out, torch.Tensor) or out.dtype != torch.bool:
            got = out.dtype if isinstance(out, torch.Tensor) else type(out).__name__
            raise TypeError(f"mask_mod must return a boolean tensor (True = attend), got {got}")
        return out

    return MaskMod(fn, name=getattr(mask_mod, "__name__", "mask_mod"))


def layout_from_mask_mod(mask_mod, *, batch: int, heads: int, q_len: int, kv_len: int, block_q: int, block_k: int,
                         device=None) -> BlockLayout:
    """The block layout of ``mask_mod`` for these sizes (every pair evaluated once, a block row at a time)."""
    return build_layout(_flex_mask(mask_mod, kv_len - q_len), batch=batch, heads=heads, q_len=q_len, kv_len=kv_len,
                        block_q=block_q, block_k=block_k, device=device)


def layout_from_block_mask(block_mask, *, batch: int, heads: int, q_len: int, kv_len: int) -> BlockLayout:
    """The layout of a FlexAttention ``BlockMask`` built for ``(q_len, kv_len)``."""
    block_q, block_k = (int(x) for x in block_mask.BLOCK_SIZE)
    counts, indices = block_mask.kv_num_blocks, block_mask.kv_indices
    Bm, Hm, nq = counts.shape
    nk = -(-kv_len // block_k)
    kind = torch.full((Bm, Hm, nq, nk + 1), EMPTY, dtype=torch.int8, device=counts.device)
    _mark(kind, counts, indices, PARTIAL, nk)
    if block_mask.full_kv_num_blocks is not None:
        _mark(kind, block_mask.full_kv_num_blocks, block_mask.full_kv_indices, FULL, nk)
    return layout_from_kinds(_flex_mask(block_mask.mask_mod, kv_len - q_len), kind[..., :nk], batch=batch,
                             heads=heads, q_len=q_len, kv_len=kv_len, block_q=block_q, block_k=block_k)


def _mark(kind, counts, indices, value, nk):
    """Set ``kind[..., indices[..., :counts]] = value``; slots past a row's count go to the spare column ``nk``."""
    slots = torch.arange(indices.shape[-1], device=indices.device)
    cols = torch.where(slots < counts[..., None].long(), indices.long().clamp(0, nk), nk)
    kind.scatter_(-1, cols, value)


def check_block_mask(block_mask, *, batch: int, heads: int, q_len: int, kv_len: int, device) -> None:
    """A clear error when ``block_mask`` is not a BlockMask for these sizes."""
    from torch.nn.attention.flex_attention import BlockMask

    if not isinstance(block_mask, BlockMask):
        raise TypeError("block_mask must be a torch.nn.attention.flex_attention.BlockMask (from create_block_mask) "
                        f"or None, got {type(block_mask).__name__}")
    if tuple(block_mask.seq_lengths) != (q_len, kv_len):
        raise ValueError(f"block_mask was built for (Q_LEN, KV_LEN) = {tuple(block_mask.seq_lengths)} but the call has "
                         f"q_len={q_len}, kv_len={kv_len}; build it for these lengths (create_block_mask)")
    Bm, Hm = block_mask.kv_num_blocks.shape[:2]
    if Bm not in (1, batch) or Hm not in (1, heads):
        raise ValueError(f"block_mask has (B, H) = ({Bm}, {Hm}); expected B in (1, {batch}) and H in (1, {heads}) "
                         "(H counts query heads)")
    if block_mask.kv_num_blocks.device != device:
        raise ValueError(f"block_mask is on {block_mask.kv_num_blocks.device} but query is on {device}")
