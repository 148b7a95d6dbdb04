"""Exact attention over run-time selected key blocks (a :class:`~attnkit.masks.selection.BlockSelection`).

The static block-sparse kernel (:mod:`attnkit.kernels.block_sparse`) gathers
each query block's key tiles. A content-chosen selection is usually made per
*token* (NSA, MoBA): gathering ``k * block_k`` keys for every query would copy
``block_k`` times more than the attention reads. So this kernel runs the other
way round, as MoBA's and Flash Sparse Attention's kernels do: the (row, block)
pairs of the selection are sorted by key block and cut into *items* of at most
``rows_per_item`` rows that share one key block; an item gathers its query rows
and reads one key/value tile, and one batched matmul runs many items.

The forward is one pass over the items: an online softmax
(:mod:`~attnkit.kernels.online_softmax`) whose keys reach a query tile by tile,
in the items' order. Every query keeps a running maximum, sum and unnormalised
output in row layout. A step raises its queries' maxima to its scores'
(``scatter_reduce_``, so a row that two items of the step reach gets one
maximum), rescales by ``2^(m_old - m_new)`` the sum and output of just the
queries whose finite maximum rose (gathered and written back), then adds its
weights' sums and values with ``index_add_``. Nothing is kept per (row, slot)
pair, so all the pairs of the selection form one set of full items (outputs
kept per pair would have to be merged in row chunks to stay small, and a
chunk's items are cut short at every tile: with chunks of 2048 rows, a fifth of
the item rows are padding at N = 32768 with NSA's selection). A first pass for
each row's log-sum-exp and a second for the normalised weights gives the same
result at one more gather and matmul per item: that forward took 1.83 CPU s
against this one's 1.50 at N = 32768 with NSA's selection (one loaded core).
Memory is O(N k) for the selection and O(step) for the rest. Pairs whose tile
lies wholly in a query's past (all but the diagonal tile) skip the causal mask;
the items that need it run in steps of their own, their queries' last allowed
keys found once per call, so masking a step is one comparison and one fill.

The backward is FlashAttention-2's recomputation: the forward saves the output
and the row log-sum-exp; the backward recomputes every item's probabilities,
accumulates dQ per row and dK/dV per key block with ``index_add_``. The row
terms ride in the matmuls: each query row carries one more column, ``-lse``
(0 in the forward), and each key one more, 1, so the score matmul
gives ``s - lse`` at once; likewise ``[dO, -delta] . [v, 1] = dP - delta``. That
spares a gather of the row terms and a pass over the scores per matmul. Scores are
in base 2 (on CPU ``exp`` takes a slow path on masked or far-below-maximum scores;
``exp2`` runs at one speed). A step's
operands are written into buffers allocated once per pass. The default budget
of a step, 2^20 scores (64 items of 256 query rows and 64 keys), spreads each
torch op's fixed cost over many items while the batched matmuls still run near
the GEMM rate (on one CPU core: 151 GFLOP/s at 64 items, 173 at 8, a 4096 GEMM 199).

A gated branch (:func:`add_gated_selected_blocks`, ``into += g * O`` with one
gate per query row, as NSA mixes its branches) folds the gate into the kernel:
the forward adds the gated rows into ``into`` as they leave the row layout, so
``O`` is never written out in the query layout, and the backward takes
``rowsum(dO * O)`` on the copy of ``dO`` in the row layout, which is the gate's
gradient, then scales that copy and the row term by the gate (the branch's own
``dO`` is ``g dO``, its ``delta = g * rowsum(dO * O)``). The gate costs no
output-sized product ``g * dO`` and no row dot of its own.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..masks.selection import BlockSelection
from .online_softmax import floor
from .row_terms import row_dot, with_ones
from .token_blocks import last_block, whole_blocks

LOG2E = 1.4426950408889634
BUDGET = 1 << 20  # score elements of one batched step


def selected_block_attention(q, k, v, selection: BlockSelection, *, scale: float, causal: bool,
                             rows_per_item: int | None = None, budget: int = BUDGET) -> torch.Tensor:
    """Softmax attention of ``q (B, H, Nq, D)`` over ``k, v (B, Hkv, Nk, D/Dv)`` restricted to ``selection``.

    ``rows_per_item`` (default: about 256 queries per item) and ``budget`` (score
    elements per batched step) are execution knobs; the result does not depend on them.
    """
    _check(q, k, v, selection)
    return _SelectedBlocks.apply(q, k, v, None, None, selection, scale, causal, rows_per_item, budget)


def add_gated_selected_blocks(into, gate, q, k, v, selection: BlockSelection, *, scale: float, causal: bool,
                              rows_per_item: int | None = None, budget: int = BUDGET) -> torch.Tensor:
    """``into += gate[..., None] * selected_block_attention(q, k, v, selection, ...)``, in place, returning ``into
    (B, H, Nq, Dv)`` (an autograd in-place step: ``into`` may be an intermediate result, not a leaf that requires
    grad); ``gate (B, H, Nq)`` weighs each query's row (a branch gate, as in a gated sum of attention
    branches). The kernel adds the gated rows into ``into`` as it leaves its row layout and, backward, applies the
    gate to ``dO`` in that layout, taking the gate's gradient with the row term it needs anyway: the gated branch
    costs no tensor the size of the output beyond the ungated one it keeps for the backward."""
    _check(q, k, v, selection)
    B, H, Nq, _ = q.shape
    if gate.shape != (B, H, Nq) or into.shape != (B, H, Nq, v.shape[3]):
        raise ValueError(f"gate {tuple(gate.shape)}, into {tuple(into.shape)}: expected gate (B, H, Nq) = "
                         f"{(B, H, Nq)} and into (B, H, Nq, Dv) = {(B, H, Nq, v.shape[3])}")
    return _SelectedBlocks.apply(q, k, v, gate, into, selection, scale, causal, rows_per_item, budget)


def matmul_shapes(q, k, v, selection: BlockSelection, *, causal: bool, rows_per_item: int | None = None,
                  budget: int = BUDGET) -> list[tuple[int, int, int, int]]:
    """The kernel's batched matmuls, one ``(items, query rows, keys, head_dim)`` per step: each step runs two
    matmuls of these sizes forward and five backward (to time the kernel against its matmuls alone)."""
    _check(q, k, v, selection)
    plan = _Plan(q, k, v, selection, causal, rows_per_item, budget)
    return [(i1 - i0, plan.per_item * plan.width, plan.bk, plan.D) for i0, i1, _ in plan.steps()]


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
    """Sizes, the row view of q and the items of the whole selection (shared by forward and backward)."""

    def __init__(self, q, k, v, sel: BlockSelection, causal: bool, rows_per_item, budget):
        self.B, self.H, self.Nq, self.D = q.shape
        self.Hkv, self.Nk, self.Dv = k.shape[1], k.shape[2], v.shape[3]
        self.G, self.R = sel.groups, sel.blocks.shape[2]
        self.bq, self.bk, self.g = sel.block_q, sel.block_k, self.H // self.G
        self.nk = sel.n_key_blocks
        self.rows = self.B * self.G * self.R  # query rows; row ``self.rows`` is the null row pads read
        self.width = self.g * self.bq  # queries in a row
        self.causal, self.offset = causal, self.Nk - self.Nq
        self.per_item = rows_per_item or max(1, 256 // self.width)
        self.items_per_step = max(1, budget // (self.per_item * self.width * self.bk))
        self.item_row, self.item_key, self.n_unmasked = self._items(sel)
        self.last_keys, self.key_offsets = self._last_keys(), torch.arange(self.bk, device=q.device)

    def _items(self, sel):
        """Every (row, slot) pair grouped into items: each item's rows (padded with the null row), each item's
        kv tile and how many items lead that need no mask (items that need it come last)."""
        B, G, R, S = sel.blocks.shape
        device = sel.blocks.device
        total = B * self.Hkv * self.nk
        # each (batch, group)'s first tile: batch b's kv head group // (G // Hkv); a pair's sort key is its tile,
        # plus ``total`` when it needs the mask; unused slots sort last
        head = torch.arange(B, device=device)[:, None] * self.Hkv + torch.arange(G, device=device) // (G // self.Hkv)
        key = sel.blocks + (head * self.nk)[:, :, None, None]
        key += self._partial(torch.arange(R, device=device)[:, None], sel.blocks).long() * total
        key = torch.where(sel.valid, key, 2 * total).to(torch.int32).flatten()
        n_pairs = int(sel.valid.sum())
        key, order = key.sort(stable=True)
        key, order = key[:n_pairs], order[:n_pairs]
        uniq, counts = torch.unique_consecutive(key, return_counts=True)
        uniq = uniq.long()
        pieces = -(-counts // self.per_item)
        piece_start = pieces.cumsum(0) - pieces
        # a pair's place among the items' rows: its rank within its tile plus where the tile's items begin
        shift = torch.repeat_interleave(piece_start * self.per_item - (counts.cumsum(0) - counts), counts)
        n_items = int(pieces.sum())
        place = torch.arange(n_pairs, device=device) + shift
        item_row = torch.full((n_items * self.per_item,), self.rows, dtype=torch.long, device=device)
        item_row[place] = order // S
        item_key = torch.repeat_interleave(uniq, pieces)
        n_unmasked = int(pieces[uniq < total].sum())
        return item_row.view(n_items, self.per_item), item_key % total, n_unmasked

    def _partial(self, r, blk):
        """Pairs whose tile needs the element mask: keys past the end, or (causal) past some query of the row."""
        last_key = (blk + 1) * self.bk - 1
        partial = last_key >= self.Nk
        if self.causal:
            partial = partial | (last_key > self.offset + r * self.bq)
        return partial

    def steps(self):
        """``(first item, end item, masked)`` of every batched step; a step's items all need the mask or none."""
        n = self.item_row.shape[0]
        for lo, hi, masked in ((0, self.n_unmasked, False), (self.n_unmasked, n, True)):
            for i in range(lo, hi, self.items_per_step):
                yield i, min(hi, i + self.items_per_step), masked

    def _last_keys(self):
        """``(masked items, per_item * width)``: the last key each query of a masked item may attend to, counted
        from its tile's first key (below 0: none)."""
        rows, keys = self.item_row[self.n_unmasked:], self.item_key[self.n_unmasked:]
        device, M = rows.device, self.per_item * self.width
        first_key = (keys % self.nk) * self.bk
        last = (self.Nk - 1 - first_key)[:, None]
        if self.causal:
            r = rows % self.R
            qpos = self.offset + r[:, :, None] * self.bq + torch.arange(self.bq, device=device)  # (I, P, bq)
            qpos = qpos[:, :, None, :].expand(-1, -1, self.g, -1).reshape(rows.shape[0], M)
            last = torch.minimum(last, qpos - first_key[:, None])
        return last.expand(rows.shape[0], M).contiguous()

    def mask(self, s, i0, i1):
        """Set to -inf the scores ``s (I, per_item * width, bk)`` of masked items ``i0:i1`` that are not allowed."""
        last = self.last_keys[i0 - self.n_unmasked: i1 - self.n_unmasked]
        s.masked_fill_(self.key_offsets > last[:, :, None], float("-inf"))


def _row_heads(x, plan: _Plan):
    """Row-layout ``x (rows + 1, width, E)`` as ``(B, G, g, R, bq, E)`` (a view, the null row left out)."""
    return x[: plan.rows].view(plan.B, plan.G, plan.R, plan.g, plan.bq, x.shape[-1]).permute(0, 1, 3, 2, 4, 5)


def _rows(x, plan: _Plan, scale: float = 1.0):
    """q-like ``(B, H, Nq, E)`` times ``scale`` -> ``(rows + 1, width, E + 1)``: row-major (b, group, row) with a
    zero null row last and a last column of zeros for a row term, written into one buffer (the only copy of
    ``x``; a last, shorter block is zero-filled)."""
    N, E = x.shape[2:]
    buffer = x.new_empty(plan.rows + 1, plan.width, E + 1)
    buffer[plan.rows] = 0
    buffer[..., E] = 0
    heads = _row_heads(buffer[..., :E], plan)  # query head (group, i) is a strided (R, bq, E) run of the buffer
    whole = N // plan.bq
    torch.mul(whole_blocks(x, plan.bq).unflatten(1, (plan.G, plan.g)), scale, out=heads[:, :, :, :whole])
    if whole < plan.R:
        rest = last_block(x, plan.bq)
        torch.mul(rest.unflatten(1, (plan.G, plan.g)), scale, out=heads[:, :, :, whole, : rest.shape[2]])
        heads[:, :, :, whole, rest.shape[2]:] = 0
    return buffer


def _query_blocks(y, plan: _Plan):
    """``y (B, H, Nq, E)`` as views ``(B, G, g, whole, bq, E)`` of its whole query blocks and ``(B, G, g, rest, E)`` of
    the last, shorter one (``rest`` may be 0): the shapes of :func:`_row_heads`' blocks."""
    by_group = y.unflatten(1, (plan.G, plan.g))
    whole = plan.Nq // plan.bq
    return by_group[:, :, :, : whole * plan.bq].unflatten(3, (whole, plan.bq)), by_group[:, :, :, whole * plan.bq:]


def _unrows(x, plan: _Plan, scale: float = 1.0):
    """The inverse of :func:`_rows` (no null row, no extra column) times ``scale``: ``(rows + 1, width, E)`` ->
    ``(B, H, Nq, E)``, in one copy."""
    heads = _row_heads(x, plan)
    out = x.new_empty(plan.B, plan.H, plan.Nq, x.shape[-1])
    whole, rest = _query_blocks(out, plan)
    torch.mul(heads[:, :, :, : whole.shape[3]], scale, out=whole)
    if rest.shape[3]:
        torch.mul(heads[:, :, :, whole.shape[3], : rest.shape[3]], scale, out=rest)
    return out


def _add_unrows(into, gate, x, plan: _Plan):
    """``into += gate[..., None] * _unrows(x)`` in place, without the ``(B, H, Nq, E)`` tensor ``_unrows`` makes."""
    heads = _row_heads(x, plan)
    (whole, rest), (gate_whole, gate_rest) = _query_blocks(into, plan), _query_blocks(gate[..., None], plan)
    whole.addcmul_(heads[:, :, :, : whole.shape[3]], gate_whole)
    if rest.shape[3]:
        rest.addcmul_(heads[:, :, :, whole.shape[3], : rest.shape[3]], gate_rest)


def _tiles(x, plan: _Plan):
    """``(B, Hkv, Nk, E)`` -> ``(B * Hkv * nk, bk, E)``: a view when ``bk`` divides ``Nk``, else padded with zero keys."""
    extra = plan.nk * plan.bk - x.shape[2]
    if extra:
        x = F.pad(x, (0, 0, 0, extra))
    return x.reshape(-1, plan.bk, x.shape[-1])


class _Workspace:
    """One step's operands, allocated once per pass and reused by every step (``out=``): steps are small enough
    to stay in cache, and fresh tensors of that size every step cost more than filling them."""

    def __init__(self, plan: _Plan, like: torch.Tensor, *, backward: bool):
        I, M, E = plan.items_per_step, plan.per_item * plan.width, max(plan.D, plan.Dv)
        sizes = {"q": M * (plan.D + 1), "k": plan.bk * (plan.D + 1), "v": plan.bk * (plan.Dv + 1), "s": M * plan.bk,
                 "o": M * E}
        if backward:
            sizes.update(do=M * (plan.Dv + 1), dp=M * plan.bk, dkv=plan.bk * E)
        self.buffers = {name: like.new_empty(I * size) for name, size in sizes.items()}

    def __call__(self, name, *shape):
        """The buffer ``name``'s first elements viewed as ``shape``."""
        return self.buffers[name][: math.prod(shape)].view(shape)


def _scores(qr, kt, plan: _Plan, ws: _Workspace, i0, i1, masked):
    """Base-2 scores ``(I, per_item * width, bk)`` of items ``i0:i1`` less the rows' term (masked where needed),
    the gathered query rows and key tiles, each with its extra column; all three in the workspace. Also returns
    the items' rows, flattened, and key tiles."""
    rows, keys = plan.item_row[i0:i1], plan.item_key[i0:i1]
    I, M, E = i1 - i0, plan.per_item * plan.width, plan.D + 1
    flat = rows.flatten()
    qg = torch.index_select(qr, 0, flat, out=ws("q", I * plan.per_item, plan.width, E)).view(I, M, E)
    kg = torch.index_select(kt, 0, keys, out=ws("k", I, plan.bk, E))
    s = torch.bmm(qg, kg.transpose(1, 2), out=ws("s", I, M, plan.bk))
    if masked:
        plan.mask(s, i0, i1)
    return s, qg, kg, flat, keys


def _fold(s, queries, top, total, out):
    """Fold a step's base-2 scores ``s (I, M, bk)`` (-inf where masked) into the running softmax state of their
    queries (:mod:`~attnkit.kernels.online_softmax`): ``queries (I * M,)`` indexes each query's running maximum
    ``top``, sum ``total`` and unnormalised output ``out`` (one query per row). The maxima rise to the step's;
    ``total`` and ``out`` of the queries whose maximum rose are rescaled by ``2^(m_old - m_new)``; the step's
    weights ``2^(s - m_new)`` replace ``s`` and their sums are added to ``total``. A query that two items of the
    step reach sees one maximum: its rescaled state is computed, and written, the same way twice."""
    lowest = floor(s.dtype)
    before = top.index_select(0, queries)
    top.scatter_reduce_(0, queries, s.amax(-1).flatten(), "amax")
    after = top.index_select(0, queries)
    # a query with no finite score yet has nothing to rescale (its sum and output are 0)
    rose = ((after > before) & (before > lowest)).nonzero().squeeze(1)
    if rose.numel():
        at = queries.index_select(0, rose)
        factor = torch.exp2(before.index_select(0, rose) - after.index_select(0, rose))
        total.index_copy_(0, at, total.index_select(0, at).mul_(factor))
        out.index_copy_(0, at, out.index_select(0, at).mul_(factor[:, None]))
    p = s.sub_(after.view(*s.shape[:2], 1)).exp2_()
    total.index_add_(0, queries, p.sum(-1).flatten())
    return p


class _SelectedBlocks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, gate, into, sel, scale, causal, rows_per_item, budget):
        plan = _Plan(q, k, v, sel, causal, rows_per_item, budget)
        qr = _rows(q, plan, scale * LOG2E)  # its last column 0: the forward sees the plain scores
        kt, vt = with_ones(_tiles(k, plan)), _tiles(v, plan)
        ws = _Workspace(plan, q, backward=False)
        W, M, Dv = plan.width, plan.per_item * plan.width, plan.Dv
        # every query's running maximum, sum and unnormalised output (row layout; the null row's last)
        top = q.new_full(((plan.rows + 1) * W,), floor(q.dtype))
        total = q.new_zeros((plan.rows + 1) * W)
        out = q.new_zeros(plan.rows + 1, W, Dv)
        in_row = torch.arange(W, device=q.device)
        for i0, i1, masked in plan.steps():
            s, _, _, flat, keys = _scores(qr, kt, plan, ws, i0, i1, masked)
            I = i1 - i0
            p = _fold(s, (flat[:, None] * W + in_row).flatten(), top, total, out.view(-1, Dv))
            vg = torch.index_select(vt, 0, keys, out=ws("v", I, plan.bk, Dv))
            out.index_add_(0, flat, torch.bmm(p, vg, out=ws("o", I, M, Dv)).view(-1, W, Dv))
        seen = total > 0
        lse = torch.where(seen, top + total.log2(), float("inf")).view(plan.rows + 1, W)
        lse[plan.rows] = float("inf")  # pads read the null row: no weight in the backward
        out.mul_(torch.where(seen, total.reciprocal(), 0.0).view(plan.rows + 1, W, 1))
        qr[..., plan.D] = lse.neg()
        ctx.save_for_backward(qr, k, v, out, gate)
        ctx.plan, ctx.scale = plan, scale
        if into is None:
            return _unrows(out, plan)
        _add_unrows(into, gate, out, plan)
        ctx.mark_dirty(into)
        return into

    @staticmethod
    def backward(ctx, grad_out):
        qr, k, v, out, gate = ctx.saved_tensors
        plan = ctx.plan
        D, Dv = plan.D, plan.Dv
        kt, vt = with_ones(_tiles(k, plan)), with_ones(_tiles(v, plan))
        dor = _rows(grad_out, plan)  # any strides: a dO broadcast from a sum is read in place
        delta = row_dot(dor[..., :Dv], out)  # rowsum(dO O), the gate's gradient when there is one
        d_gate = None
        if gate is not None:  # the branch's own dO is gate * dO, and its delta gate * rowsum(dO O)
            d_gate = _unrows(delta[..., None], plan)[..., 0]
            gate_rows = _rows(gate[..., None], plan)[..., :1]
            dor[..., :Dv] *= gate_rows
            delta *= gate_rows[..., 0]
        dor[..., Dv] = delta.neg_()
        dq = qr.new_zeros(plan.rows + 1, plan.width, D)
        dk, dv = qr.new_zeros(kt.shape[0], plan.bk, D), qr.new_zeros(vt.shape[0], plan.bk, Dv)
        ws = _Workspace(plan, qr, backward=True)
        M, W = plan.per_item * plan.width, plan.width
        for i0, i1, masked in plan.steps():
            s, qg, kg, flat, keys = _scores(qr, kt, plan, ws, i0, i1, masked)
            I = i1 - i0
            P = flat.numel()
            p = s.exp2_()
            dog = torch.index_select(dor, 0, flat, out=ws("do", P, W, Dv + 1)).view(I, M, Dv + 1)
            dv.index_add_(0, keys, torch.bmm(p.transpose(1, 2), dog[..., :Dv], out=ws("dkv", I, plan.bk, Dv)))
            vg = torch.index_select(vt, 0, keys, out=ws("v", I, plan.bk, Dv + 1))
            ds = p.mul_(torch.bmm(dog, vg.transpose(1, 2), out=ws("dp", I, M, plan.bk)))
            dq.index_add_(0, flat, torch.bmm(ds, kg[..., :D], out=ws("o", I, M, D)).view(P, W, D))
            dk.index_add_(0, keys, torch.bmm(ds.transpose(1, 2), qg[..., :D], out=ws("dkv", I, plan.bk, D)))
        dq = _unrows(dq, plan, ctx.scale)
        dk = dk.div_(LOG2E).view(plan.B, plan.Hkv, -1, plan.D)[:, :, : plan.Nk]
        dv = dv.view(plan.B, plan.Hkv, -1, plan.Dv)[:, :, : plan.Nk]
        d_into = grad_out if ctx.needs_input_grad[4] else None
        return dq, dk, dv, d_gate, d_into, None, None, None, None, None
