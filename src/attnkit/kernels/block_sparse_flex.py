"""Block-sparse attention with a FlexAttention ``score_mod`` applied inside the tiles.

The same work plan as :mod:`attnkit.kernels.block_sparse` (items of one query
block and the key tiles it visits, grouped into batched matmuls), with the
user's ``score_mod(score, b, h, q_idx, kv_idx)`` called once per step on the
whole step's scores. Its index arguments are broadcastable integer tensors
(FlexAttention's meaning: ``q_idx`` the query row, ``h`` the query head):
``score (R, hq, bq, keys)``, ``b (R, 1, 1, 1)``, ``h (1, hq, 1, 1)`` (or
``(R, 1, 1, 1)`` when the layout differs per head), ``q_idx (R, 1, bq, 1)``,
``kv_idx (R, 1, 1, keys)``; indices of padding rows and keys are clamped to
the last valid one, and masked out after the modifier (FlexAttention
applies ``where(mask, score_mod(score), -inf)``; attnkit adds -inf, or writes
it when a key is not finite, as the block-sparse kernel does).

Each group sweeps its tiles with an online softmax (running max, sum and
output). Without autograd on a CPU, the groups are dealt to as many worker
threads as intra-op threads, each running its ops single-threaded
(:mod:`attnkit.kernels.workers`). Under autograd a group is a differentiable function recomputed in
the backward (``torch.utils.checkpoint``), so gradients reach q, k, v and any
tensor the ``score_mod`` closes over (a learned bias), with O(N) memory
outside the group being computed.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from ..masks.layout import BlockLayout
from .block_sparse import LOG2E, _blocks, _gather, _Geometry, _mask_table, _mask_tile, _unblock
from .online_softmax import fold, normalise
from .plan import plan_groups
from .workers import balance, run_in_threads

LN2 = 0.6931471805599453


def flex_block_sparse(q, k, v, layout: BlockLayout, *, scale: float, score_mod=None, budget: int = 1 << 20):
    """``(out (B, H, Nq, Dv), lse (B, H, Nq))`` of softmax attention over ``layout``'s tiles with ``score_mod``.

    ``lse`` is the natural log-sum-exp of each row's modified, masked scores
    (``-inf`` for a row that sees no key, whose output is zeros).
    """
    geo = _Geometry(q, k, v, layout)
    groups = plan_groups(layout, geo.B, geo.H, geo.Hkv, geo.hq, budget)
    # softmax in base 2 (exp2 keeps its speed on -inf); without a modifier log2 e rides in the query scale
    qs = _blocks(q * (scale if score_mod is not None else scale * LOG2E), geo.bq)
    kb, vb = _blocks(k, geo.bk), _blocks(v, geo.bk)
    fns = [_FlexGroup(grp, layout, geo, score_mod) for grp in groups]
    threads = torch.get_num_threads()
    if torch.is_grad_enabled():
        results = [checkpoint(fn, qs, kb, vb, use_reentrant=False) for fn in fns]
    elif q.device.type == "cpu" and threads > 1 and len(fns) > 1:  # groups on threads, one op thread each
        parts = balance([grp.kv_index.numel() for grp in groups], threads)
        done = run_in_threads(lambda part: [fns[i](qs, kb, vb) for i in part], parts)
        results = [None] * len(fns)
        for part, outs in zip(parts, done):
            for i, r in zip(part, outs):
                results[i] = r
    else:
        results = [fn(qs, kb, vb) for fn in fns]
    outs, lses = [r[0] for r in results], [r[1] for r in results]
    rows = [grp.q_index.flatten() for grp in groups]
    out = qs.new_zeros(qs.shape[0], geo.bq, geo.Dv)
    lse = qs.new_full((qs.shape[0], geo.bq), float("-inf"))
    if outs:
        index = torch.cat(rows)
        out = out.index_copy(0, index, torch.cat(outs))
        lse = lse.index_copy(0, index, torch.cat(lses))
    return _unblock(out, geo.B, geo.H, geo.Nq), _unblock(lse.unsqueeze(-1), geo.B, geo.H, geo.Nq).squeeze(-1)


class _FlexGroup:
    """One group: gather its tiles chunk by chunk, score, modify, mask, online softmax."""

    def __init__(self, grp, layout, geo, score_mod):
        self.grp, self.layout, self.geo, self.mod = grp, layout, geo, score_mod

    def _indices(self, device):
        """``b, h, q_idx`` of the group's rows, broadcastable to the scores ``(R, hq, bq, keys)``."""
        grp, geo = self.grp, self.geo
        item = grp.q_index[:, 0]  # (b * H + h) * nq + query block
        b = (item // (geo.H * geo.nq)).view(-1, 1, 1, 1)
        if geo.per_head:
            h = (item // geo.nq % geo.H).view(-1, 1, 1, 1)
        else:
            h = torch.arange(geo.H, device=device).view(1, -1, 1, 1)
        rows = grp.q_block[:, None] * geo.bq + torch.arange(geo.bq, device=device)
        return b, h, rows.clamp(max=geo.Nq - 1).view(-1, 1, geo.bq, 1)

    def _modify(self, s, b, h, q_idx, c0, c1):
        grp, geo = self.grp, self.geo
        keys = (grp.tiles[:, c0:c1, None] * geo.bk + torch.arange(geo.bk, device=s.device)).view(s.shape[0], -1)
        kv_idx = keys.clamp(max=geo.Nk - 1).view(s.shape[0], 1, 1, -1)
        out = self.mod(s, b, h, q_idx, kv_idx)
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            got = out.dtype if isinstance(out, torch.Tensor) else type(out).__name__
            raise TypeError(f"score_mod must return a floating-point tensor (the modified score), got {got}")
        try:
            return torch.broadcast_to(out, s.shape).to(s.dtype)
        except RuntimeError as exc:
            raise ValueError(f"score_mod returned shape {tuple(out.shape)}, which does not broadcast to the scores' "
                             f"{tuple(s.shape)}; it must be elementwise in score, b, h, q_idx, kv_idx") from exc

    def _mask(self, s, c0, c1):
        """Mask the base-2 scores of tiles ``c0:c1`` with the tiles' element masks (partial tiles only)."""
        grp, geo = self.grp, self.geo
        slots = [slot for slot in grp.partial_slots if c0 <= slot < c1] if grp.mask_index is not None else []
        if not slots:
            return s
        table = _mask_table(self.layout, s.dtype, geo.keys_finite)
        R, t = s.shape[0], c1 - c0
        if not torch.is_grad_enabled():  # in place, tile by tile
            tiles = s.view(R, geo.hq, geo.bq, t, geo.bk)
            for slot in slots:
                _mask_tile(tiles[:, :, :, slot - c0], table.index_select(0, grp.mask_index[:, slot]).unsqueeze(1))
            return s
        m = table.index_select(0, grp.mask_index[:, c0:c1].flatten()).view(R, t, geo.bq, geo.bk)
        m = m.transpose(1, 2).reshape(R, 1, geo.bq, t * geo.bk)
        return s.masked_fill(m, float("-inf")) if m.dtype == torch.bool else s + m

    def __call__(self, qs, kb, vb):
        grp, geo = self.grp, self.geo
        R, T = grp.kv_index.shape[0], grp.kv_index.shape[2]
        qg = _gather(qs, grp.q_index, R, geo.hk, geo.g * geo.bq)
        b, h, q_idx = self._indices(qs.device) if self.mod is not None else (None, None, None)
        in_place = not torch.is_grad_enabled()  # under autograd (the checkpoint's recompute) every op is out of place
        run = None
        for c0 in range(0, T, grp.chunk):
            c1 = min(T, c0 + grp.chunk)
            kg = _gather(kb, grp.kv_index[:, :, c0:c1], R, geo.hk, (c1 - c0) * geo.bk)
            vg = _gather(vb, grp.kv_index[:, :, c0:c1], R, geo.hk, (c1 - c0) * geo.bk)
            s = (qg @ kg.transpose(-1, -2)).view(R, geo.hq, geo.bq, -1)
            if self.mod is not None:  # the modifier sees natural scores; base 2 in a new tensor (the softmax's)
                s = self._modify(s, b, h, q_idx, c0, c1) * LOG2E
            s = self._mask(s, c0, c1)
            # a kv head's g query heads x bq rows against its keys: (R * hk, g * bq, keys)
            run = fold(run, s.reshape(R * geo.hk, geo.g * geo.bq, -1), vg.reshape(R * geo.hk, -1, geo.Dv),
                       base2=True, in_place=in_place)
        out, lse = normalise(run, base2=True)
        lse = lse * LN2  # natural log-sum-exp; -inf where a row sees no key
        return out.reshape(-1, geo.bq, geo.Dv), lse.reshape(-1, geo.bq)
