"""Block-sparse exact attention: visit only the non-empty tiles of a block layout.

The work is cut into *items*: one block of queries (for all heads when the
layout is shared by heads, for one head otherwise) with the list of key tiles
it must visit. Items are sorted by tile count and grouped so that each step is
one large batched matmul over a group of items, the key/value tiles gathered
with ``index_select`` (the "gather the visited tiles per block row" layout of
block-sparse FlashAttention kernels, done with torch ops so the same code runs
on a GPU). The element mask is applied only where a tile is partial; a group
whose tiles are all full skips it. Rows longer than the step budget are swept
with an online softmax (running max and sum), as in FlashAttention.

Partial tiles are masked by adding a 0 / -inf table, which is several times
faster on CPU than a masked fill. A key that is NaN or infinite would turn the
blocked entries of its column into NaN (NaN + -inf), and so the rows of its tile
that must not see it; so when the keys are not all finite (a sum over ``k``
per call) the blocked entries are written as -inf instead, and a NaN key stays
causal. A NaN *value* behind a blocked entry still reaches the row (0 * NaN),
as it does in the reference's ``P @ V``.

Softmax without a score modifier — the fast path — is a custom autograd
function with FlashAttention-2's backward: the forward keeps only the output
and the row log-sum-exp, and the backward recomputes each tile's probabilities
and accumulates dQ per item and dK/dV with ``index_add_``. Memory is O(N).
In ``dS = P * (dP - delta)``, ``delta`` is a row's ``rowsum(P * dP)`` computed
from the same ``P`` and ``dP`` when the row's tiles fit in one step, so that it
cancels ``dP`` exactly where one key takes all the weight (a row of a short
cross-attention that sees one key gets dS = 0, as the reference does, rather
than float32 noise summed over every such row into dK); only rows swept in
several steps use FlashAttention-2's ``rowsum(dO * O)``, equal in exact
arithmetic but rounded differently from ``dP``.
Score modifiers and other normalisers (:mod:`attnkit.scores`) take the general
path: each group is a differentiable function checkpointed by
``torch.utils.checkpoint`` (recomputed in the backward), also O(N).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..masks.layout import BlockLayout
from ..scores.normalisers import SOFTMAX, Normaliser
from .nonfinite import all_finite
from .online_softmax import Partial, fold, normalise
from .plan import plan_groups

LOG2E = 1.4426950408889634


def block_sparse_attention(q, k, v, layout: BlockLayout, *, scale: float, score_mod=None,
                           normaliser: Normaliser = SOFTMAX, budget: int = 1 << 20) -> torch.Tensor:
    """Attention of ``q (B, H, Nq, D)`` over ``k, v (B, Hkv, Nk, D/Dv)`` restricted to ``layout``.

    ``layout`` must have been built for these sizes (it carries the causal rule,
    the pattern and any user mask). ``budget`` bounds the score elements of one step.
    """
    B, H, Nq, _ = q.shape
    if (layout.q_len, layout.kv_len) != (Nq, k.shape[2]) or layout.batch != B or layout.heads != H:
        raise ValueError(
            f"layout was built for (batch, heads, q_len, kv_len) = {(layout.batch, layout.heads, layout.q_len, layout.kv_len)}"
            f" but got {(B, H, Nq, k.shape[2])}"
        )
    if score_mod is None and normaliser.kind == "exp" and not normaliser.signed:
        return _BlockSparseSoftmax.apply(q, k, v, layout, scale, budget)
    return _general(q, k, v, layout, scale, score_mod, normaliser, budget)


def _pad_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    n = x.shape[2]
    extra = -n % block
    return F.pad(x, (0, 0, 0, extra)) if extra else x


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """``(B, H, N, D)`` padded to whole blocks, viewed as ``(B * H * nblocks, block, D)``."""
    x = _pad_blocks(x, block)
    return x.reshape(-1, block, x.shape[-1])


class _Geometry:
    """Sizes shared by the forward and backward of one call."""

    def __init__(self, q, k, v, layout: BlockLayout):
        self.B, self.H, self.Nq, self.D = q.shape
        self.Hkv, self.Nk, self.Dv = k.shape[1], k.shape[2], v.shape[3]
        self.bq, self.bk = layout.block_q, layout.block_k
        self.nq, self.nk = layout.kind.shape[2], layout.kind.shape[3]
        self.per_head = layout.kind.shape[1] > 1
        self.hq = 1 if self.per_head else self.H  # query heads per item
        self.hk = 1 if self.per_head else self.Hkv  # kv heads per item
        self.g = self.hq // self.hk
        # a non-finite key must be masked by writing -inf: adding -inf to its NaN score gives NaN
        self.keys_finite = all_finite(k)


class _Workspace:
    """Flat scratch buffers reused by every step of one call.

    On CPU a fresh multi-megabyte tensor per step costs page faults that take
    longer than the arithmetic on it, so the gathered tiles and the score
    matrices are written (``out=``) into buffers that only grow.
    """

    def __init__(self, like: torch.Tensor):
        self.like, self.buffers = like, {}

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        n = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < n:
            buf = self.buffers[name] = self.like.new_empty(n)
        return buf[:n].view(shape)


class _BlockSparseSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, layout, scale, budget):
        geo = _Geometry(q, k, v, layout)
        geo.q_scale = scale * LOG2E  # scores in base 2: exp2 keeps its speed on masked (-inf) scores, exp does not
        groups = plan_groups(layout, geo.B, geo.H, geo.Hkv, geo.hq, budget)
        qs = _blocks(q, geo.bq)  # scaled after each gather: no full-size scaled copy of q
        kb, vb = _blocks(k, geo.bk), _blocks(v, geo.bk)
        bias, ws = _mask_table(layout, q.dtype, geo.keys_finite), _Workspace(q)
        acc = qs.new_zeros(qs.shape[0], geo.bq, geo.Dv)
        row_max = qs.new_zeros(qs.shape[0], geo.bq)
        denom = qs.new_zeros(qs.shape[0], geo.bq)
        for grp in groups:
            part = _forward_group(qs, kb, vb, grp, bias, geo, ws)
            rows = grp.q_index.flatten()
            acc.index_copy_(0, rows, part.out.view(-1, geo.bq, geo.Dv))
            row_max.index_copy_(0, rows, part.max.view(-1, geo.bq))
            denom.index_copy_(0, rows, part.sum.view(-1, geo.bq))
        # a row that sees no key: output 0, and lse = +inf so that its p = 0 in the backward
        out, lse = normalise(Partial(acc, row_max.unsqueeze(-1), denom.unsqueeze(-1)), base2=True,
                             empty_lse=float("inf"), in_place=True)
        ctx.save_for_backward(qs, k, v, out, lse)
        ctx.layout, ctx.scale, ctx.groups, ctx.geo = layout, scale, groups, geo
        return _unblock(out, geo.B, geo.H, geo.Nq)

    @staticmethod
    def backward(ctx, grad_out):
        qs, k, v, out, lse = ctx.saved_tensors
        geo = ctx.geo
        kb, vb = _blocks(k, geo.bk), _blocks(v, geo.bk)
        dob = _blocks(grad_out.contiguous(), geo.bq)
        delta = (dob * out).sum(-1)  # rowsum(dO * O), per query: for rows swept in several steps
        dq, dk, dv = torch.zeros_like(qs), torch.zeros_like(kb), torch.zeros_like(vb)
        bias, ws = _mask_table(ctx.layout, qs.dtype, geo.keys_finite), _Workspace(qs)
        for grp in ctx.groups:
            _backward_group(qs, kb, vb, dob, lse, delta, dq, dk, dv, grp, bias, geo, ws)
        # the scores were (q * scale * log2 e) k^T in base 2; dS is the gradient of the natural-log scores
        dq = _unblock(dq.mul_(ctx.scale), geo.B, geo.H, geo.Nq)
        dk = _unblock(dk.div_(LOG2E), geo.B, geo.Hkv, geo.Nk)
        return dq, dk, _unblock(dv, geo.B, geo.Hkv, geo.Nk), None, None, None


def _unblock(x, B, H, N):
    return x.view(B, H, -1, x.shape[-1])[:, :, :N]


def _gather(blocks, index, R, hk, rows):
    """Rows ``index`` (R, hk, ...) of a block tensor, as ``(R, hk, rows, D)``."""
    return blocks.index_select(0, index.flatten()).view(R, hk, rows, blocks.shape[-1])


def _gather_into(ws, name, blocks, index, rows):
    """Like :func:`_gather` into a workspace buffer, as ``(R * hk, rows, D)``."""
    flat = index.flatten()
    out = ws.get(name, (flat.numel(), *blocks.shape[1:]))
    torch.index_select(blocks, 0, flat, out=out)
    return out.view(-1, rows, blocks.shape[-1])


def _tile_mask(table, mask_index, geo):
    """(R, T) table entries -> tiles side by side, broadcastable to scores viewed (R, hk, g, bq, T*bk)."""
    R, T = mask_index.shape
    m = table.index_select(0, mask_index.flatten()).view(R, T, geo.bq, geo.bk)
    return m.transpose(1, 2).reshape(R, 1, 1, geo.bq, T * geo.bk)


def _mask_table(layout, dtype, keys_finite):
    """The mask table as partial tiles apply it: additive 0 / -inf when every key is finite (adding is
    several times faster than a broadcast masked fill on CPU), else the boolean table of blocked entries."""
    key = ("bias", dtype) if keys_finite else ("blocked",)
    if key not in layout.cache:
        blocked = ~layout.table
        layout.cache[key] = blocked if not keys_finite else torch.zeros(
            layout.table.shape, dtype=dtype, device=layout.table.device).masked_fill_(blocked, float("-inf"))
    return layout.cache[key]


def _mask_tile(tile, entry):
    """Mask one tile slot of the scores in place with its table entries (``_mask_table``'s kind)."""
    if entry.dtype == torch.bool:
        tile.masked_fill_(entry, float("-inf"))
    else:
        tile.add_(entry)


def _scores(qg, kb, grp, c0, c1, bias, geo, ws):
    """Base-2 scores of tiles ``c0:c1`` of the group, ``(R * hk, g * bq, tiles * bk)``, masked; and the keys."""
    R, t = grp.kv_index.shape[0], c1 - c0
    kg = _gather_into(ws, "k", kb, grp.kv_index[:, :, c0:c1], t * geo.bk)
    s = torch.bmm(qg, kg.transpose(1, 2), out=ws.get("s", (R * geo.hk, qg.shape[1], t * geo.bk)))
    if grp.mask_index is not None:
        tiles = s.view(R, geo.hq, geo.bq, t, geo.bk)
        for slot in grp.partial_slots:  # full tiles need no mask
            if c0 <= slot < c1:
                _mask_tile(tiles[:, :, :, slot - c0], bias.index_select(0, grp.mask_index[:, slot]).unsqueeze(1))
    return s, kg


def _forward_group(qs, kb, vb, grp, bias, geo, ws) -> Partial:
    """Base-2 online softmax over the group's tiles: the rows' partial state."""
    T = grp.kv_index.shape[2]
    qg = _gather_into(ws, "q", qs, grp.q_index, geo.g * geo.bq).mul_(geo.q_scale)
    run = None
    for c0 in range(0, T, grp.chunk):
        c1 = min(T, c0 + grp.chunk)
        s, _ = _scores(qg, kb, grp, c0, c1, bias, geo, ws)
        vg = _gather_into(ws, "v", vb, grp.kv_index[:, :, c0:c1], (c1 - c0) * geo.bk)
        run = fold(run, s, vg, base2=True, in_place=True)
    return run


def _backward_group(qs, kb, vb, dob, lse, delta, dq, dk, dv, grp, bias, geo, ws):
    T = grp.kv_index.shape[2]
    rows = geo.g * geo.bq
    qg = _gather_into(ws, "q", qs, grp.q_index, rows).mul_(geo.q_scale)
    dog = _gather_into(ws, "do", dob, grp.q_index, rows)
    lse_g = lse.index_select(0, grp.q_index.flatten()).view(-1, rows, 1)
    delta_g = delta.index_select(0, grp.q_index.flatten()).view(-1, rows, 1) if T > grp.chunk else None
    dqg = torch.zeros_like(qg)
    for c0 in range(0, T, grp.chunk):
        c1 = min(T, c0 + grp.chunk)
        s, kg = _scores(qg, kb, grp, c0, c1, bias, geo, ws)
        vg = _gather_into(ws, "v", vb, grp.kv_index[:, :, c0:c1], (c1 - c0) * geo.bk)
        p = s.sub_(lse_g).exp2_()
        index = grp.kv_index[:, :, c0:c1].flatten()
        dv.index_add_(0, index, torch.bmm(p.transpose(1, 2), dog).view(-1, geo.bk, geo.Dv))
        dp = torch.bmm(dog, vg.transpose(1, 2), out=ws.get("dp", p.shape))
        if T <= grp.chunk:  # the whole row is here: its rowsum(P * dP), as the reference's softmax backward
            delta_g = torch.mul(p, dp, out=ws.get("p_dp", p.shape)).sum(-1, keepdim=True)
        ds = p.mul_(dp.sub_(delta_g))
        dqg.baddbmm_(ds, kg)
        dk.index_add_(0, index, torch.bmm(ds.transpose(1, 2), qg).view(-1, geo.bk, geo.D))
    dq.index_copy_(0, grp.q_index.flatten(), dqg.view(-1, geo.bq, geo.D))


def _general(q, k, v, layout, scale, score_mod, normaliser, budget):
    """Any score modifier / normaliser: per-group differentiable code, checkpointed."""
    geo = _Geometry(q, k, v, layout)
    groups = plan_groups(layout, geo.B, geo.H, geo.Hkv, geo.hq, budget)
    qs = _blocks(q * scale, geo.bq)
    kb, vb = _blocks(k, geo.bk), _blocks(v, geo.bk)
    outs, rows = [], []
    for grp in groups:
        fn = _GeneralGroup(grp, layout, geo, score_mod, normaliser)
        outs.append(checkpoint(fn, qs, kb, vb, use_reentrant=False) if torch.is_grad_enabled() else fn(qs, kb, vb))
        rows.append(grp.q_index.flatten())
    out = qs.new_zeros(qs.shape[0], geo.bq, geo.Dv)
    if outs:
        out = out.index_copy(0, torch.cat(rows), torch.cat(outs))
    return _unblock(out, geo.B, geo.H, geo.Nq)


class _GeneralGroup:
    """One group's rows in full (no online sweep): gather, score, modify, normalise, weight."""

    def __init__(self, grp, layout, geo, score_mod, normaliser):
        self.grp, self.layout, self.geo, self.mod, self.norm = grp, layout, geo, score_mod, normaliser

    def _modify(self, s, q_pos, k_pos, q_row):
        """Score modifiers read the head from dim 1 (ALiBi's slopes, T5's buckets): an item of a per-head
        layout holds one head, so it is shown at its place among all heads and read back."""
        if not self.geo.per_head:
            return self.mod(s, q_pos, k_pos)
        head = int(q_row) // self.geo.nq % self.geo.H
        return self.mod(s.expand(-1, self.geo.H, -1, -1), q_pos, k_pos)[:, head : head + 1]

    def __call__(self, qs, kb, vb):
        grp, geo = self.grp, self.geo
        R, T = grp.kv_index.shape[0], grp.kv_index.shape[2]
        qg = _gather(qs, grp.q_index, R, geo.hk, geo.g * geo.bq)
        kg = _gather(kb, grp.kv_index, R, geo.hk, T * geo.bk)
        vg = _gather(vb, grp.kv_index, R, geo.hk, T * geo.bk)
        s = (qg @ kg.transpose(-1, -2)).view(R, geo.hq, geo.bq, T * geo.bk)
        if self.mod is not None:
            offset = self.layout.offset
            q_pos = offset + grp.q_block[:, None] * geo.bq + torch.arange(geo.bq, device=s.device)
            k_pos = (grp.tiles[:, :, None] * geo.bk + torch.arange(geo.bk, device=s.device)).view(R, -1)
            s = torch.cat([self._modify(s[r : r + 1], q_pos[r], k_pos[r], grp.q_index[r, 0]) for r in range(R)])
        if grp.mask_index is None:
            allowed = torch.ones_like(s, dtype=torch.bool)
        else:
            allowed = _tile_mask(self.layout.table, grp.mask_index, geo).view(R, 1, geo.bq, -1).expand_as(s)
        w = self.norm.weights(s, allowed).view(R, geo.hk, geo.g * geo.bq, T * geo.bk)
        return (w @ vg).reshape(-1, geo.bq, geo.Dv)
