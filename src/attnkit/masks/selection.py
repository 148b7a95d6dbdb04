"""Block selections: a block-sparse layout chosen at run time, given as indices.

A static :class:`~attnkit.masks.layout.BlockLayout` classifies every tile of a
mask known in advance. Content-chosen sparse attention (NSA, MoBA, the
training-free prefill estimators, ...) instead picks, for every query *row*,
a short list of key blocks from the scores of the call itself. A
:class:`BlockSelection` holds that list:

- ``blocks``: long ``(B, G, R, k)``, the key block numbers each row attends to;
- ``valid``: bool ``(B, G, R, k)``, which of the ``k`` slots are used (rows may
  select fewer blocks than ``k``; duplicates are counted once);
- a *row* is ``block_q`` consecutive queries of the ``H // G`` query heads of
  group ``g`` (query heads ``g * H // G ...``). ``G`` is the number of query
  heads (one selection per head), the number of kv heads (a GQA group shares one
  selection, as NSA requires) or anything between that divides ``H`` and is a
  multiple of the kv heads; group ``g`` reads kv head ``g // (G // Hkv)``.
  ``R = ceil(q_len / block_q)``; ``block_q = 1`` is a selection per token.

Inside a selected block the causal rule (bottom-right, as everywhere in attnkit)
still applies element by element; a query whose selected keys are all in its
future, or that selects nothing, outputs zeros.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels.positions import query_positions
from ..validation import check_int


@dataclass(frozen=True)
class BlockSelection:
    blocks: torch.Tensor  # long (B, G, R, k): key block numbers
    valid: torch.Tensor  # bool (B, G, R, k): used slots, duplicates removed
    block_q: int
    block_k: int
    q_len: int
    kv_len: int

    @property
    def groups(self) -> int:
        return self.blocks.shape[1]

    @property
    def n_key_blocks(self) -> int:
        return -(-self.kv_len // self.block_k)

    def element_mask(self, heads: int, *, causal: bool) -> torch.Tensor:
        """The dense boolean mask ``(B, heads, q_len, kv_len)`` this selection stands for (tests, references; O(N^2))."""
        B, G, R, _ = self.blocks.shape
        nk = self.n_key_blocks
        hit = torch.zeros(B, G, R, nk + 1, dtype=torch.bool, device=self.blocks.device)
        hit.scatter_(3, torch.where(self.valid, self.blocks, nk), True)
        rows = hit[..., :nk].repeat_interleave(self.block_q, dim=2)[:, :, : self.q_len]
        dense = rows.repeat_interleave(self.block_k, dim=3)[..., : self.kv_len]
        dense = dense.repeat_interleave(heads // G, dim=1)
        if causal:
            qpos = query_positions(self.q_len, self.kv_len, self.blocks.device)
            dense = dense & (torch.arange(self.kv_len, device=self.blocks.device) <= qpos[:, None])
        return dense

    def density(self, *, causal: bool) -> float:
        """Attended (query, key) pairs / all pairs the (causal) dense attention would visit, per head."""
        return _pair_count(self, causal) / _dense_pairs(self, causal)


def block_selection(blocks: torch.Tensor, valid: torch.Tensor | None = None, *, block_q: int, block_k: int,
                    q_len: int, kv_len: int) -> BlockSelection:
    """Check a selection and drop its duplicate slots; ``valid=None`` means every slot is used."""
    for name, value in (("block_q", block_q), ("block_k", block_k), ("q_len", q_len), ("kv_len", kv_len)):
        check_int(name, value)
    if not isinstance(blocks, torch.Tensor) or blocks.ndim != 4 or blocks.dtype != torch.long:
        raise TypeError("blocks must be a long tensor (batch, groups, query_rows, k) of key block numbers")
    rows = -(-q_len // block_q)
    if blocks.shape[2] != rows:
        raise ValueError(f"blocks has {blocks.shape[2]} query rows; q_len={q_len} in rows of block_q={block_q} needs {rows}")
    if valid is None:
        valid = torch.ones_like(blocks, dtype=torch.bool)
    if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool or valid.shape != blocks.shape:
        raise ValueError(f"valid must be a boolean tensor of the shape of blocks {tuple(blocks.shape)}")
    nk = -(-kv_len // block_k)
    if valid.any() and (blocks[valid].min() < 0 or blocks[valid].max() >= nk):
        raise ValueError(f"blocks must lie in [0, {nk}) (kv_len={kv_len} in blocks of block_k={block_k}) where valid")
    return BlockSelection(blocks, _without_duplicates(blocks, valid, nk), block_q, block_k, q_len, kv_len)


def _without_duplicates(blocks, valid, nk):
    """A slot repeating a block already selected by its row is marked unused."""
    if blocks.shape[3] < 2:
        return valid
    keyed = torch.where(valid, blocks, nk)
    ordered, order = keyed.sort(dim=3)
    repeat = torch.zeros_like(valid)
    repeat[..., 1:] = ordered[..., 1:] == ordered[..., :-1]
    return valid & ~torch.zeros_like(valid).scatter(3, order, repeat)


def _pair_count(sel: BlockSelection, causal: bool) -> int:
    """(query, key) pairs the selection attends to, summed over batch and groups (per head of a group)."""
    B, G, R, _ = sel.blocks.shape
    bq, bk = sel.block_q, sel.block_k
    device = sel.blocks.device
    first = torch.arange(R, device=device) * bq
    width = (sel.q_len - first).clamp(max=bq)  # queries per row
    qpos0 = first + sel.kv_len - sel.q_len  # position of each row's first query
    k0 = sel.blocks * bk
    klen = (sel.kv_len - k0).clamp(max=bk)
    if not causal:
        pairs = klen * width[:, None]
    else:
        # query qpos0 + i sees keys k0 .. min(k0 + klen, qpos0 + i + 1) - 1
        i = torch.arange(bq, device=device)
        seen = ((qpos0[:, None, None] + i + 1) - k0[..., None]).clamp(min=0)
        seen = torch.minimum(seen, klen[..., None]) * (i < width[:, None, None])
        pairs = seen.sum(-1)
    return int((pairs * sel.valid).sum())


def _dense_pairs(sel: BlockSelection, causal: bool) -> int:
    B, G = sel.blocks.shape[:2]
    nq, nk = sel.q_len, sel.kv_len
    if not causal:
        return B * G * nq * nk
    offset = nk - nq
    return B * G * int((torch.arange(nq) + offset + 1).clamp(min=0, max=nk).sum())
