"""Exact attention over run-time selected key blocks (a :class:`~attnkit.masks.selection.BlockSelection`).

The static block-sparse kernel (:mod:`attnkit.kernels.block_sparse`) gathers
each query block's key tiles. A content-chosen selection is usually made per
*token* (NSA, MoBA): gathering ``k * block_k`` keys for every query would copy
``block_k`` times more than the attention reads. So this kernel runs the other
way round, as MoBA's and Flash Sparse Attention's kernels do: the (row, block)
pairs of the selection are sorted by key block and cut into *items* of at most
``rows_per_item`` rows that share one key block; an item gathers its query rows
and reads one key/value tile, and one batched matmul runs many items.

Each (row, slot) pair yields a partial softmax (row max, row sum, unnormalised
output), stored in item order as the batched matmuls write it; the slots of a
row are then merged with the log-sum-exp rule: the row's log-sum-exp from the
slots' maxima and sums alone, then every partial output weighted and added to
its row with one ``index_add_``. Rows are
processed in chunks so these results stay small: memory is O(N k) for the
selection and O(chunk) for the rest. Pairs whose tile
lies wholly in a query's past (all but the diagonal tile) skip the causal mask.

The backward is FlashAttention-2's recomputation: the forward saves the output
and the row log-sum-exp; the backward recomputes every item's probabilities,
accumulates dQ per row and dK/dV per key block with ``index_add_``. Scores are
in base 2 (``exp2`` is several times faster than ``exp`` on CPU).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..masks.selection import BlockSelection
from .online_softmax import floor
from .token_blocks import last_block, whole_blocks

LOG2E = 1.4426950408889634
BUDGET = 1 << 21  # score elements of one batched step


def selected_block_attention(q, k, v, selection: BlockSelection, *, scale: float, causal: bool,
                             rows_per_item: int | None = None, budget: int = BUDGET) -> torch.Tensor:
    """Softmax attention of ``q (B, H, Nq, D)`` over ``k, v (B, Hkv, Nk, D/Dv)`` restricted to ``selection``.

    ``rows_per_item`` (default: about 256 queries per item) and ``budget`` (score
    elements per batched step) are execution knobs; the result does not depend on them.
    """
    _check(q, k, v, selection)
    return _SelectedBlocks.apply(q, k, v, selection, scale, causal, rows_per_item, budget)


def matmul_shapes(q, k, v, selection: BlockSelection, *, causal: bool, rows_per_item: int | None = None,
                  budget: int = BUDGET) -> list[tuple[int, int, int, int]]:
    """The kernel's batched matmuls, one ``(items, query rows, keys, head_dim)`` per step: each step runs two
    matmuls of these sizes forward and five backward (to time the kernel against its matmuls alone)."""
    _check(q, k, v, selection)
    plan = _Plan(q, k, v, selection, causal, rows_per_item, budget)
    return [(i1 - i0, plan.per_item * plan.width, plan.bk, plan.D) for chunk in plan.chunks
            for i0, i1 in plan.steps(chunk)]


def _check(q, k, v, sel: BlockSelection):
    B, H, Nq, _ = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G = sel.groups
    if (sel.q_len, sel.kv_len) != (Nq, Nk) or sel.blocks.shape[0] != B:
        raise ValueError(f"selection was made for (batch, q_len, kv_len) = {(sel.blocks.shape[0], sel.q_len, sel.kv_len)}"
                         f" but got {(B, Nq, Nk)}")
    if H % G or G % Hkv:
        raise ValueError(f"selection has {G} groups: it must divide heads={H} and be a multiple of kv_heads={Hkv}")
    if sel.blocks.device != q.device:
        raise ValueError(f"selection is on {sel.blocks.device} but q is on {q.device}")


class _Plan:
    """Sizes, the row view of q and the items of every row chunk (shared by forward and backward)."""

    def __init__(self, q, k, v, sel: BlockSelection, causal: bool, rows_per_item, budget):
        self.B, self.H, self.Nq, self.D = q.shape
        self.Hkv, self.Nk, self.Dv = k.shape[1], k.shape[2], v.shape[3]
        self.G, self.R, self.slots = sel.groups, sel.blocks.shape[2], sel.blocks.shape[3]
        self.bq, self.bk, self.g = sel.block_q, sel.block_k, self.H // self.G
        self.nk = sel.n_key_blocks
        self.rows = self.B * self.G * self.R  # query rows; row ``self.rows`` is the null row pads read
        self.width = self.g * self.bq  # queries in a row
        self.causal, self.offset = causal, self.Nk - self.Nq
        self.per_item = rows_per_item or max(1, 256 // self.width)
        self.items_per_step = max(1, budget // (self.per_item * self.width * self.bk))
        chunk_rows = max(1, (4 * budget) // (self.slots * self.width * max(self.Dv, 16)))
        self.chunks = [self._items(sel, r0, min(self.rows, r0 + chunk_rows)) for r0 in range(0, self.rows, chunk_rows)]

    def _items(self, sel, r0, r1):
        """The pairs of rows ``r0:r1`` grouped into items: (first row, end row, each item's rows, the place of
        each (row, slot) result among the items' rows, each item's kv tile, whether the item needs the mask)."""
        valid = sel.valid.reshape(-1, self.slots)[r0:r1]
        blocks = sel.blocks.reshape(-1, self.slots)[r0:r1]
        row, slot = valid.nonzero(as_tuple=True)
        blk = blocks[row, slot]
        row = row + r0
        g = (row // self.R) % self.G
        b = row // (self.R * self.G)
        tile = (b * self.Hkv + g // (self.G // self.Hkv)) * self.nk + blk
        partial = self._partial(row % self.R, blk)
        key = tile + partial.long() * (self.B * self.Hkv * self.nk)
        key, order = key.sort()
        row, slot = row[order], slot[order]
        uniq, counts = torch.unique_consecutive(key, return_counts=True)
        pieces = -(-counts // self.per_item)
        group_start = counts.cumsum(0) - counts
        piece_start = pieces.cumsum(0) - pieces
        group = torch.repeat_interleave(torch.arange(uniq.numel(), device=key.device), counts)
        pos = torch.arange(key.numel(), device=key.device) - group_start[group]
        item = piece_start[group] + pos // self.per_item
        n_items = int(pieces.sum())
        item_row = torch.full((n_items, self.per_item), self.rows, dtype=torch.long, device=key.device)
        item_row[item, pos % self.per_item] = row
        # where each (row, slot) result lands in the item-ordered results; unused slots read the sentinel
        sentinel = n_items * self.per_item
        pair_of = torch.full((r1 - r0, self.slots), sentinel, dtype=torch.long, device=key.device)
        pair_of[row - r0, slot] = item * self.per_item + pos % self.per_item
        item_key = torch.repeat_interleave(uniq, pieces)
        total = self.B * self.Hkv * self.nk
        return r0, r1, item_row, pair_of, item_key % total, item_key >= total

    def _partial(self, r, blk):
        """Pairs whose tile needs the element mask: keys past the end, or (causal) past some query of the row."""
        last_key = (blk + 1) * self.bk - 1
        partial = last_key >= self.Nk
        if self.causal:
            partial = partial | (last_key > self.offset + r * self.bq)
        return partial

    def steps(self, chunk):
        """Item index ranges of one batched step each."""
        n = chunk[2].shape[0]
        return [(i, min(n, i + self.items_per_step)) for i in range(0, n, self.items_per_step)]

    def allowed(self, item_row, item_key):
        """Boolean mask ``(I, per_item * width, bk)`` of the pairs a step's items may attend to."""
        device = item_row.device
        blk = item_key % self.nk
        kpos = blk[:, None] * self.bk + torch.arange(self.bk, device=device)  # (I, bk)
        allowed = (kpos < self.Nk)[:, None, :]
        if self.causal:
            r = item_row % self.R
            qpos = self.offset + r[:, :, None] * self.bq + torch.arange(self.bq, device=device)  # (I, P, bq)
            qpos = qpos[:, :, None, :].expand(-1, -1, self.g, -1).reshape(item_row.shape[0], -1)
            allowed = allowed & (kpos[:, None, :] <= qpos[:, :, None])
        return allowed


def _rows(x, plan: _Plan, scale: float = 1.0):
    """q-like ``(B, H, Nq, E)`` times ``scale`` -> ``(rows + 1, width, E)``: row-major (b, group, row) with a zero
    null row last, written into one buffer (the only copy of ``x``; a last, shorter block is zero-filled)."""
    B, H, N, E = x.shape
    out = x.new_empty(plan.rows + 1, plan.width, E)
    out[plan.rows] = 0
    # the buffer seen as (B, G, g, R, bq, E): query head (group, i) is a strided (R, bq, E) run of it
    heads = out[: plan.rows].view(B, plan.G, plan.R, plan.g, plan.bq, E).permute(0, 1, 3, 2, 4, 5)
    whole = N // plan.bq
    torch.mul(whole_blocks(x, plan.bq).unflatten(1, (plan.G, plan.g)), scale, out=heads[:, :, :, :whole])
    if whole < plan.R:
        rest = last_block(x, plan.bq)
        torch.mul(rest.unflatten(1, (plan.G, plan.g)), scale, out=heads[:, :, :, whole, : rest.shape[2]])
        heads[:, :, :, whole, rest.shape[2]:] = 0
    return out


def _unrows(x, plan: _Plan):
    x = x[: plan.rows].view(plan.B, plan.G, plan.R, plan.g, plan.bq, x.shape[-1]).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(plan.B, plan.H, plan.R * plan.bq, x.shape[-1])[:, :, : plan.Nq]


def _tiles(x, plan: _Plan):
    """``(B, Hkv, Nk, E)`` -> ``(B * Hkv * nk, bk, E)``: a view when ``bk`` divides ``Nk``, else padded with zero keys."""
    extra = plan.nk * plan.bk - x.shape[2]
    if extra:
        x = F.pad(x, (0, 0, 0, extra))
    return x.reshape(-1, plan.bk, x.shape[-1])


def _merge_slots(part_out, part_max, part_sum, pair_of, item_row, r0):
    """Each row's slots merged exactly (:mod:`~attnkit.kernels.online_softmax`): the normalised output and the
    base-2 log-sum-exp (+inf if empty) of the chunk's rows ``r0 : r0 + len(pair_of)``.

    The merge runs on the scalars first: a row's log-sum-exp ``lse = log2 sum_s l_s 2^(m_s)`` from its slots'
    maxima ``m_s`` and sums ``l_s``; then every partial output, wherever it lies, is weighted by
    ``2^(m_s - lse)`` and added to its row, ``out = sum_s 2^(m_s - lse) o_s``, in one pass."""
    n_rows = pair_of.shape[0]
    top = part_max[pair_of].amax(1, keepdim=True)  # (rows, 1, width); unused slots read the -inf sentinel
    total = (part_sum[pair_of] * torch.exp2(part_max[pair_of] - top.clamp(min=floor(top.dtype)))).sum(1)
    lse = torch.where(total > 0, top[:, 0] + total.log2(), float("inf"))
    rows = (item_row.flatten() - r0).clamp_(max=n_rows)  # the null row (padding) lands on a row of its own
    n = rows.shape[0]
    weight = torch.exp2(part_max[:n] - torch.cat([lse, lse.new_full((1, lse.shape[1]), float("inf"))])[rows])
    out = part_out.new_zeros(n_rows + 1, *part_out.shape[1:])
    out.index_add_(0, rows, part_out[:n].mul_(weight.unsqueeze(-1)))
    return out[:n_rows], lse


def _scores(qr, kt, item_row, item_key, partial, plan):
    """Base-2 scores of a step's items ``(I, per_item * width, bk)``, masked where partial; and the tiles read."""
    I = item_row.shape[0]
    qg = qr.index_select(0, item_row.flatten()).view(I, -1, plan.D)
    kg = kt.index_select(0, item_key)
    s = torch.bmm(qg, kg.transpose(1, 2))
    if partial.any():
        s = s.masked_fill_(~(plan.allowed(item_row, item_key) | ~partial[:, None, None]), float("-inf"))
    return s, qg, kg


class _SelectedBlocks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, sel, scale, causal, rows_per_item, budget):
        plan = _Plan(q, k, v, sel, causal, rows_per_item, budget)
        qr = _rows(q, plan, scale * LOG2E)
        kt, vt = _tiles(k, plan), _tiles(v, plan)
        out = q.new_zeros(plan.rows + 1, plan.width, plan.Dv)
        lse = q.new_full((plan.rows + 1, plan.width), float("inf"))
        lowest = floor(q.dtype)
        for chunk in plan.chunks:
            r0, r1, item_row, pair_of, item_key, partial = chunk
            # per item row, in item order: unnormalised output, row max, row sum; one sentinel entry last
            n = item_row.numel()
            part_out = q.new_empty(n + 1, plan.width, plan.Dv)
            part_max = q.new_empty(n + 1, plan.width)
            part_sum = q.new_empty(n + 1, plan.width)
            part_out[n], part_max[n], part_sum[n] = 0.0, float("-inf"), 0.0
            for i0, i1 in plan.steps(chunk):
                rows, keys = item_row[i0:i1], item_key[i0:i1]
                s, _, _ = _scores(qr, kt, rows, keys, partial[i0:i1], plan)
                m = s.amax(-1, keepdim=True).clamp_(min=lowest)
                p = s.sub_(m).exp2_()
                at = slice(i0 * plan.per_item, i1 * plan.per_item)
                torch.bmm(p, vt.index_select(0, keys), out=part_out[at].view(i1 - i0, -1, plan.Dv))
                part_max[at] = m.view(-1, plan.width)
                part_sum[at] = p.sum(-1).view(-1, plan.width)
            out[r0:r1], lse[r0:r1] = _merge_slots(part_out, part_max, part_sum, pair_of, item_row, r0)
        ctx.save_for_backward(qr, k, v, out, lse)
        ctx.plan, ctx.scale = plan, scale
        return _unrows(out, plan)

    @staticmethod
    def backward(ctx, grad_out):
        qr, k, v, out, lse = ctx.saved_tensors
        plan = ctx.plan
        kt, vt = _tiles(k, plan), _tiles(v, plan)
        dor = _rows(grad_out.contiguous(), plan)
        delta = (dor * out).sum(-1)
        dq, dk, dv = torch.zeros_like(qr), torch.zeros_like(kt), torch.zeros_like(vt)
        for chunk in plan.chunks:
            _, _, item_row, _, item_key, partial = chunk
            for i0, i1 in plan.steps(chunk):
                rows, keys = item_row[i0:i1], item_key[i0:i1]
                flat = rows.flatten()
                s, qg, kg = _scores(qr, kt, rows, keys, partial[i0:i1], plan)
                I = rows.shape[0]
                p = s.sub_(lse.index_select(0, flat).view(I, -1, 1)).exp2_()
                dog = dor.index_select(0, flat).view(I, -1, plan.Dv)
                dv.index_add_(0, keys, torch.bmm(p.transpose(1, 2), dog))
                dp = torch.bmm(dog, vt.index_select(0, keys).transpose(1, 2))
                ds = p.mul_(dp.sub_(delta.index_select(0, flat).view(I, -1, 1)))
                dq.index_add_(0, flat, torch.bmm(ds, kg).view(-1, plan.width, plan.D))
                dk.index_add_(0, keys, torch.bmm(ds.transpose(1, 2), qg))
        dq = _unrows(dq, plan) * ctx.scale
        dk = dk.div_(LOG2E).view(plan.B, plan.Hkv, -1, plan.D)[:, :, : plan.Nk]
        dv = dv.view(plan.B, plan.Hkv, -1, plan.Dv)[:, :, : plan.Nk]
        return dq, dk, dv, None, None, None, None, None
