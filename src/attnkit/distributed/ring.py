"""Ring attention: exact softmax attention with K/V blocks passed around a ring of ranks.

After Liu, Zaharia & Abbeel, "Ring Attention with Blockwise Transformers for
Near-Infinite Context" (and Li et al.'s Ring Self-Attention): each of ``P``
ranks keeps its queries and, over ``P`` steps, sees every rank's key/value
block once. While it computes with the block it holds it already sends that
block to the next rank and receives the previous rank's (``batch_isend_irecv``),
so communication overlaps compute. Blocks are merged with their log-sum-exp in
fp32 (:func:`attnkit.distributed.blocks.merge`), so the result is exact.

Backward (as in ring-flash-attention): queries' gradients stay local; each
key/value block's gradients travel around the ring *with* the block, every
rank adding its share, and one last hop brings the sum home.

With the zigzag layout (:mod:`attnkit.distributed.layout`) a causal mask costs
every rank the same at every step. Block pairs that a mask leaves empty
(causal future, outside a sliding window, other documents) are skipped.
"""
from __future__ import annotations

import torch

from ..validation import check_scale
from . import blocks, checks
from .comm import Group
from .layout import Layout


def ring_attention(q, k, v, *, group=None, layout: str = "zigzag", causal: bool = False, window: int | None = None,
                   doc_ids: torch.Tensor | None = None, mask_mod=None, scale: float | None = None,
                   overlap: bool = True, chunk: int = 128, kv_chunk: int = 256) -> torch.Tensor:
    """Softmax self-attention over a sequence sharded across ``group``; forward and backward.

    Args:
        q, k, v: this rank's shard, ``(B, H, N / P, D)`` and ``(B, Hkv, N / P, .)`` in ``layout``
            order (:class:`attnkit.distributed.Sharding` cuts them).
        layout: ``"zigzag"`` (balanced under causal masks) or ``"contiguous"``.
        causal / window / doc_ids / mask_mod: the mask, on global positions: causal, a sliding
            window (``window`` keys before the query, and after it when not causal: the band cut at
            the sequence's ends, ``sliding_window``'s ``border="clamp"``), packed
            documents ``doc_ids (B or 1, N)`` (the whole sequence's ids, on every rank), any
            :class:`attnkit.masks.MaskMod`. All combine with "and".
        overlap: send the next block while computing (False: wait first; for measuring overlap).
        chunk / kv_chunk: query rows and keys per score tile (a tile holds ``chunk x kv_chunk`` scores
            per head; tiles are merged like ring steps, and each is skipped when its mask is empty).
    Returns:
        this rank's output shard ``(B, H, N / P, Dv)``, in the dtype of ``q``.
    """
    g = Group(group, "ring_attention")
    for name, value in (("chunk", chunk), ("kv_chunk", kv_chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    scale = check_scale(scale, q.shape[-1])
    lay = checks.sharded_self_attention(g, q, k, v, layout=layout, causal=causal, doc_ids=doc_ids)
    B, H = q.shape[:2]
    mask = blocks.build_mask(causal=causal, window=window, doc_ids=doc_ids, mask_mod=mask_mod)
    plan = _Plan(g, lay, mask, B, H, scale, chunk, q.device, kv_chunk)
    return _Ring.apply(q, k, v, plan, overlap)


class _Plan:
    """Which block pairs each ring step computes, shared by forward and backward."""

    def __init__(self, g: Group, lay: Layout, mask, batch: int, heads: int, scale: float, chunk: int, device,
                 kv_chunk: int):
        self.g, self.lay = g, lay
        self.q_runs = lay.runs(g.rank)
        self.steps = []  # per step: list of (q slice, k slice, Block)
        for step in range(g.size):
            src = (g.rank - step) % g.size
            pairs, q_off = [], 0
            for q_run in self.q_runs:
                k_off = 0
                for k_run in _split(lay.runs(src), kv_chunk):
                    kind = blocks.classify(mask, q_run, k_run, batch, heads, device)
                    if kind != blocks.EMPTY:
                        q_pos = torch.arange(q_run[0], q_run[0] + q_run[1], device=device)
                        k_pos = torch.arange(k_run[0], k_run[0] + k_run[1], device=device)
                        pairs.append((slice(q_off, q_off + q_run[1]), slice(k_off, k_off + k_run[1]),
                                      blocks.Block(mask, kind, q_pos, k_pos, scale, chunk)))
                    k_off += k_run[1]
                q_off += q_run[1]
            self.steps.append(pairs)


def _split(runs, size: int):
    """Runs cut into pieces of at most ``size`` positions."""
    return [(s + i, min(size, n - i)) for s, n in runs for i in range(0, n, size)]


class _Ring(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan: _Plan, overlap: bool):
        g = plan.g
        B, H, n, _ = q.shape
        acc = blocks.accumulator_dtype(q.dtype)
        out = torch.zeros(B, H, n, v.shape[-1], dtype=acc, device=q.device)
        lse = torch.full((B, H, n), float("-inf"), dtype=acc, device=q.device)
        kv = [k, v]
        for step, pairs in enumerate(plan.steps):
            pending = g.shift(kv, f"ring step {step}: passing K/V") if step + 1 < g.size else None
            if pending is not None and not overlap:
                nxt = pending.wait()
            for qs, ks, block in pairs:
                o, s = block.forward(q[:, :, qs], kv[0][:, :, ks], kv[1][:, :, ks])
                out[:, :, qs], lse[:, :, qs] = blocks.merge(out[:, :, qs], lse[:, :, qs], o, s)
            if pending is not None:
                kv = nxt if not overlap else pending.wait()
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.overlap = plan, overlap
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        plan, g = ctx.plan, ctx.plan.g
        delta = (dout.to(out.dtype) * out).sum(dim=-1)
        dq = torch.zeros(q.shape, dtype=out.dtype, device=q.device)
        kv, grads, pending_grads = [k, v], None, None
        for step, pairs in enumerate(plan.steps):
            pending = g.shift(kv, f"backward ring step {step}: passing K/V") if step + 1 < g.size else None
            dk = torch.zeros(k.shape, dtype=out.dtype, device=k.device)
            dv = torch.zeros(v.shape, dtype=out.dtype, device=v.device)
            for qs, ks, block in pairs:
                bq, bk, bv = block.backward(q[:, :, qs], kv[0][:, :, ks], kv[1][:, :, ks], dout[:, :, qs],
                                            lse[:, :, qs], delta[:, :, qs])
                dq[:, :, qs] += bq
                dk[:, :, ks] += bk
                dv[:, :, ks] += bv
            if pending_grads is not None:
                carried = pending_grads.wait()
                dk, dv = dk + carried[0], dv + carried[1]
            if g.size > 1:  # the block's gradients go on with it; after the last step they reach its owner
                pending_grads = g.shift([dk, dv], f"backward ring step {step}: passing dK/dV")
            else:
                grads = (dk, dv)
            if pending is not None:
                kv = pending.wait()
        if pending_grads is not None:
            grads = pending_grads.wait()
        return dq.to(q.dtype), grads[0].to(k.dtype), grads[1].to(v.dtype), None, None
