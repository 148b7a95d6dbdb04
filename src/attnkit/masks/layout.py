"""Block layouts: which tiles of the attention matrix are empty, partial or full.

The block-sparse kernel visits only non-empty tiles and applies the element
mask only on partial ones. A layout is built from any :class:`MaskMod`:

1. every tile is classified from its position ranges with the mask's tile
   classifier (interval arithmetic: ``O(tiles)``, no pair is looked at), or, for
   a mask without one, by evaluating its pairs one block row at a time;
2. the element mask is evaluated on the tiles classified partial only, and
   those that turn out all-true or all-false are reclassified.

So a sliding window at N = 131072 costs a million tile tests plus the pairs
of two tiles per block row. Partial tiles keep their element masks in one table
(entry 0 = all allowed, entry 1 = none, 2.. the partial tiles).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import MaskMod
from ..validation import check_int

EMPTY, PARTIAL, FULL = 0, 1, 2


@dataclass
class BlockLayout:
    q_len: int
    kv_len: int
    block_q: int
    block_k: int
    kind: torch.Tensor  # int8 (Bm, Hm, nQB, nKB), Bm in {1, B}, Hm in {1, H}
    table_index: torch.Tensor  # long (Bm, Hm, nQB, nKB): 0 full, 1 empty, >= 2 partial
    table: torch.Tensor  # bool (2 + P, block_q, block_k)
    batch: int
    heads: int
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def offset(self) -> int:
        return self.kv_len - self.q_len

    @property
    def pairs(self) -> int:
        """Allowed (query, key) pairs summed over batch and heads."""
        bq, bk = self.block_q, self.block_k
        rows = _valid(self.kind.shape[2], bq, self.q_len, self.kind.device)
        cols = _valid(self.kind.shape[3], bk, self.kv_len, self.kind.device)
        full_pairs = ((self.kind == FULL) * (rows[:, None] * cols[None, :])).sum()
        partial = self.table_index >= 2
        per_entry = self.table[2:].sum(dim=(1, 2))
        partial_pairs = per_entry[self.table_index[partial] - 2].sum() if partial.any() else 0
        reps = (self.batch // self.kind.shape[0]) * (self.heads // self.kind.shape[1])
        return int(full_pairs + partial_pairs) * reps

    @property
    def density(self) -> float:
        """Allowed pairs / all pairs."""
        return self.pairs / (self.batch * self.heads * self.q_len * self.kv_len)

    @property
    def tile_density(self) -> float:
        """Non-empty tiles / all tiles: the share of dense work the kernel does."""
        return float((self.kind != EMPTY).float().mean())

    @property
    def computed_pairs(self) -> int:
        """(query, key) pairs in the non-empty tiles, summed over batch and heads: the scores a tiled
        kernel computes (and exponentiates) to get the allowed ones."""
        reps = (self.batch // self.kind.shape[0]) * (self.heads // self.kind.shape[1])
        rows = _valid(self.kind.shape[2], self.block_q, self.q_len, self.kind.device)
        cols = _valid(self.kind.shape[3], self.block_k, self.kv_len, self.kind.device)
        return int(((self.kind != EMPTY) * (rows[:, None] * cols[None, :])).sum()) * reps

    def flops(self, head_dim: int) -> int:
        """Forward FLOPs, LongCA / FlashAttention convention: 4 * allowed pairs * head_dim."""
        return 4 * self.pairs * head_dim

    def counts(self) -> dict:
        return {name: int((self.kind == k).sum()) for name, k in (("empty", EMPTY), ("partial", PARTIAL), ("full", FULL))}

    def element_mask(self) -> torch.Tensor:
        """The dense boolean mask ``(Bm, Hm, q_len, kv_len)`` (for pictures and tests; O(N^2))."""
        Bm, Hm, nq, nk = self.kind.shape
        tiles = self.table[self.table_index]  # (Bm, Hm, nq, nk, bq, bk)
        dense = tiles.permute(0, 1, 2, 4, 3, 5).reshape(Bm, Hm, nq * self.block_q, nk * self.block_k)
        return dense[:, :, : self.q_len, : self.kv_len]


def _valid(n_blocks: int, block: int, length: int, device) -> torch.Tensor:
    starts = torch.arange(n_blocks, device=device) * block
    return (length - starts).clamp(max=block)


def build_layout(mask: MaskMod, *, batch: int, heads: int, q_len: int, kv_len: int,
                 block_q: int = 128, block_k: int = 128, device=None) -> BlockLayout:
    """Classify every ``block_q x block_k`` tile of ``mask`` for the given sizes."""
    for name, value in (("block_q", block_q), ("block_k", block_k)):
        check_int(name, value)
    nq, nk = -(-q_len // block_q), -(-kv_len // block_k)
    offset = kv_len - q_len
    rows = torch.arange(nq, device=device)
    cols = torch.arange(nk, device=device)
    q_lo = offset + rows * block_q
    q_hi = offset + torch.clamp((rows + 1) * block_q, max=q_len) - 1
    k_lo = cols * block_k
    k_hi = torch.clamp((cols + 1) * block_k, max=kv_len) - 1
    b = torch.arange(batch, device=device).view(-1, 1, 1, 1)
    h = torch.arange(heads, device=device).view(1, -1, 1, 1)
    if mask.tiles is not None:
        any_, all_ = mask.tiles(b, h, q_lo.view(1, 1, -1, 1), q_hi.view(1, 1, -1, 1), k_lo.view(1, 1, 1, -1),
                                k_hi.view(1, 1, 1, -1))
    else:
        any_, all_ = _classify_by_pairs(mask, b, h, q_lo, k_lo, q_len, kv_len, block_q, block_k)
    any_, all_ = torch.broadcast_tensors(torch.as_tensor(any_, device=device), torch.as_tensor(all_, device=device))
    shape = _layout_shape(any_.shape, batch, heads, nq, nk)
    any_, all_ = any_.expand(shape), all_.expand(shape)
    kind = torch.where(all_, FULL, torch.where(any_, PARTIAL, EMPTY)).to(torch.int8)
    return layout_from_kinds(mask, kind, batch=batch, heads=heads, q_len=q_len, kv_len=kv_len,
                             block_q=block_q, block_k=block_k)


def layout_from_kinds(mask: MaskMod, kind: torch.Tensor, *, batch: int, heads: int, q_len: int, kv_len: int,
                      block_q: int, block_k: int) -> BlockLayout:
    """A layout whose tile kinds are already known (int8 ``(Bm, Hm, nQB, nKB)``, ``EMPTY/PARTIAL/FULL``).

    ``mask`` is evaluated on the partial tiles only, whose all-true / all-false
    ones are reclassified; full tiles are taken as given (another library's
    block mask, e.g. FlexAttention's, may declare a tile full without the mask).
    """
    kind = kind.to(torch.int8).clone()
    if kv_len % block_k:
        last = kind[..., -1]
        last[last == FULL] = PARTIAL  # padded keys must be masked out
    kind = kind.contiguous()
    table_index, table = _partial_table(mask, kind, kv_len - q_len, q_len, kv_len, block_q, block_k)
    return BlockLayout(q_len, kv_len, block_q, block_k, kind, table_index, table, batch, heads)


def _layout_shape(shape, batch, heads, nq, nk):
    shape = (1,) * (4 - len(shape)) + tuple(shape)
    return (batch if shape[0] > 1 else 1, heads if shape[1] > 1 else 1, nq, nk)


def _classify_by_pairs(mask, b, h, q_lo, k_lo, q_len, kv_len, block_q, block_k):
    """Fallback for masks without a tile classifier: every pair, one block row at a time."""
    offset = kv_len - q_len
    kv = torch.arange(kv_len, device=k_lo.device)
    nk = k_lo.numel()
    anys, alls = [], []
    for r in range(q_lo.numel()):
        q = torch.arange(int(q_lo[r]), min(int(q_lo[r]) + block_q, offset + q_len), device=k_lo.device)
        m = mask(b, h, q.view(1, 1, -1, 1), kv.view(1, 1, 1, -1))
        m = torch.broadcast_to(m, torch.broadcast_shapes(m.shape, (1, 1, q.numel(), kv_len)))
        m = torch.nn.functional.pad(m, (0, nk * block_k - kv_len), value=True)
        m = m.reshape(*m.shape[:2], q.numel(), nk, block_k)
        anys.append(m.any(dim=(2, 4)) & _real_keys(nk, block_k, kv_len, m.device))
        alls.append(m.all(dim=(2, 4)))
    return torch.stack(anys, dim=2), torch.stack(alls, dim=2)


def _real_keys(nk, block_k, kv_len, device):
    return torch.arange(nk, device=device) * block_k < kv_len


def _partial_table(mask, kind, offset, q_len, kv_len, block_q, block_k, chunk=4096):
    """Evaluate the element mask on partial tiles; reclassify the all-true / all-false ones."""
    Bm, Hm, nq, nk = kind.shape
    device = kind.device
    idx = (kind == PARTIAL).nonzero()
    masks = []
    r = torch.arange(block_q, device=device)
    c = torch.arange(block_k, device=device)
    for s in range(0, idx.shape[0], chunk):
        part = idx[s : s + chunk]
        b = part[:, 0].view(-1, 1, 1)
        h = part[:, 1].view(-1, 1, 1)
        rows = (part[:, 2, None] * block_q + r).view(-1, block_q, 1)
        kv = (part[:, 3, None] * block_k + c).view(-1, 1, block_k)
        m = mask(b, h, offset + rows.clamp(max=q_len - 1), kv.clamp(max=kv_len - 1))
        if q_len % block_q or kv_len % block_k:
            m = m & (kv < kv_len) & (rows < q_len)  # padding is never attended
        masks.append(torch.broadcast_to(m, (part.shape[0], block_q, block_k)))
    tiles = torch.cat(masks) if masks else torch.zeros(0, block_q, block_k, dtype=torch.bool, device=device)
    flat = tiles.reshape(tiles.shape[0], block_q * block_k)
    all_true, all_false = flat.all(dim=1), ~flat.any(dim=1)
    pos = (idx[:, 0], idx[:, 1], idx[:, 2], idx[:, 3])
    kind[pos] = torch.where(all_true, FULL, torch.where(all_false, EMPTY, PARTIAL)).to(kind.dtype)
    keep = ~(all_true | all_false)
    table_index = torch.where(kind == FULL, 0, 1).to(torch.long)
    kept = idx[keep]
    table_index[kept[:, 0], kept[:, 1], kept[:, 2], kept[:, 3]] = torch.arange(2, 2 + kept.shape[0], device=device)
    base = torch.stack([torch.ones(block_q, block_k, dtype=torch.bool, device=device),
                        torch.zeros(block_q, block_k, dtype=torch.bool, device=device)])
    return table_index, torch.cat([base, tiles[keep]])
