"""Ring attention: exact softmax attention with K/V blocks passed around a ring of ranks.

After Liu, Zaharia & Abbeel, "Ring Attention with Blockwise Transformers for
Near-Infinite Context" (and Li et al.'s Ring Self-Attention): each of ``P``
ranks keeps its queries and, over ``P`` steps, sees every rank's key/value
block once. While it computes with the block it holds it already sends that
block to the next rank and receives the previous rank's (``batch_isend_irecv``),
so communication overlaps compute. Blocks are merged with their log-sum-exp in
fp32 (:func:`attnkit.kernels.online_softmax.merge_normalised`), so the result is exact.

Backward (as in ring-flash-attention): queries' gradients stay local; each
key/value block's gradients travel around the ring *with* the block, every
rank adding its share, and one last hop brings the sum home.

With the zigzag layout (:mod:`attnkit.distributed.layout`) a causal mask costs
every rank the same at every step. Block pairs that a mask leaves empty
(causal future, outside a sliding window, other documents) are skipped. Any
score modifier of the chunked kernel (ALiBi, soft-capping, T5 buckets, ...) runs
on global positions (:mod:`attnkit.distributed.blocks`).
"""
from __future__ import annotations

import torch

from ..kernels.online_softmax import merge_normalised
from ..validation import check_scale
from . import blocks, checks
from .comm import Group
from .layout import Layout


def ring_attention(q, k, v, *, group=None, layout: str = "zigzag", causal: bool = False, window: int | None = None,
                   doc_ids: torch.Tensor | None = None, mask_mod=None, score_mod=None, score_mod_inputs=(),
                   scale: float | None = None, overlap: bool = True, chunk: int = 128,
                   kv_chunk: int = 256) -> torch.Tensor:
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
        score_mod: ``mod(scores (B, H, nq, nk), q_pos, k_pos) -> scores`` on global positions (the
            chunked kernel's modifiers: ``attnkit.scores.alibi.alibi_mod()``, ``softcap_mod(cap)``, ...).
        score_mod_inputs: the tensors ``score_mod`` reads that need gradients (a learned bias table):
            each gets this rank's share of its gradient; sum it over the group like any replicated parameter.
        overlap: send the next block while computing (False: wait first; for measuring overlap).
        chunk / kv_chunk: query rows and keys per score tile (a tile holds ``chunk x kv_chunk`` scores
            per head; tiles are merged like ring steps, and each is skipped when its mask is empty).
    Returns:
        this rank's output shard ``(B, H, N / P, Dv)``, in the dtype of ``q``.
    """
    plan = Plan.of("ring_attention", q, k, v, group=group, layout=layout, causal=causal, window=window,
                   doc_ids=doc_ids, mask_mod=mask_mod, score_mod=score_mod, score_mod_inputs=score_mod_inputs,
                   scale=scale, chunk=chunk, kv_chunk=kv_chunk)
    return _Ring.apply(q, k, v, plan, overlap, *plan.mod_inputs)


class Plan:
    """The tiles (query run x key run of two shards) a call computes, shared by forward and backward."""

    def __init__(self, g: Group, lay: Layout, mask, batch: int, heads: int, scale: float, chunk: int, device,
                 kv_chunk: int, mod=None, mod_inputs: tuple = ()):
        self.g, self.lay, self.mask, self.batch, self.heads = g, lay, mask, batch, heads
        self.scale, self.chunk, self.kv_chunk, self.device = scale, chunk, kv_chunk, device
        self.mod, self.mod_inputs = mod, tuple(mod_inputs)
        self._pairs = {}
        # ring step s: this rank's queries against the keys of rank (rank - s) mod P
        self.steps = [self.pairs(g.rank, (g.rank - step) % g.size) for step in range(g.size)]

    @classmethod
    def of(cls, strategy: str, q, k, v, *, group, layout, causal, window, doc_ids, mask_mod, score_mod,
           score_mod_inputs, scale, chunk, kv_chunk) -> "Plan":
        """Check a call's arguments (alike on every rank) and plan its tiles."""
        g = Group(group, strategy)
        for name, value in (("chunk", chunk), ("kv_chunk", kv_chunk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if score_mod is not None and not callable(score_mod):
            raise TypeError(f"score_mod must be a callable mod(scores, q_pos, k_pos), got {type(score_mod).__name__}")
        score_mod_inputs = tuple(score_mod_inputs)
        if not all(isinstance(t, torch.Tensor) for t in score_mod_inputs):
            raise TypeError("score_mod_inputs must be a sequence of tensors (those score_mod reads)")
        scale = check_scale(scale, q.shape[-1])
        lay = checks.sharded_self_attention(g, q, k, v, layout=layout, causal=causal, doc_ids=doc_ids)
        mask = blocks.build_mask(causal=causal, window=window, doc_ids=doc_ids, mask_mod=mask_mod)
        return cls(g, lay, mask, q.shape[0], q.shape[1], scale, chunk, q.device, kv_chunk, score_mod,
                   score_mod_inputs)

    def pairs(self, q_rank: int, k_rank: int):
        """``(q slice, k slice, Block)`` for every non-empty tile of rank ``q_rank``'s queries against
        rank ``k_rank``'s keys (slices index the two shards)."""
        if (q_rank, k_rank) not in self._pairs:
            found, q_off = [], 0
            for q_run in self.lay.runs(q_rank):
                k_off = 0
                for k_run in _split(self.lay.runs(k_rank), self.kv_chunk):
                    kind = blocks.classify(self.mask, q_run, k_run, self.batch, self.heads, self.device)
                    if kind != blocks.EMPTY:
                        q_pos = torch.arange(q_run[0], q_run[0] + q_run[1], device=self.device)
                        k_pos = torch.arange(k_run[0], k_run[0] + k_run[1], device=self.device)
                        found.append((slice(q_off, q_off + q_run[1]), slice(k_off, k_off + k_run[1]),
                                      blocks.Block(self.mask, kind, q_pos, k_pos, self.scale, self.chunk,
                                                   self.mod, self.mod_inputs)))
                    k_off += k_run[1]
                q_off += q_run[1]
            self._pairs[q_rank, k_rank] = found
        return self._pairs[q_rank, k_rank]


def _split(runs, size: int):
    """Runs cut into pieces of at most ``size`` positions."""
    return [(s + i, min(size, n - i)) for s, n in runs for i in range(0, n, size)]


def input_grads(grads: list, inputs: tuple) -> tuple:
    """One gradient per modifier input, zeros for those no tile reached (a rank whose tiles were all masked)."""
    return tuple(torch.zeros_like(t) if d is None else d.to(t.dtype) for d, t in zip(grads, inputs))


def forward_over_ring(q, k, v, plan: Plan, overlap: bool):
    """Forward pass shared by ring and BurstAttention: K/V travel, queries stay; ``(out, lse)`` in fp32/fp64."""
    g = plan.g
    B, H, n, _ = q.shape
    acc = blocks.accumulator_dtype(q.dtype)
    out = torch.zeros(B, H, n, v.shape[-1], dtype=acc, device=q.device)
    lse = torch.full((B, H, n), float("-inf"), dtype=acc, device=q.device)
    kv = [k, v]
    for step, pairs in enumerate(plan.steps):
        pending = g.shift(kv, f"forward step {step}: passing K/V") if step + 1 < g.size else None
        if pending is not None and not overlap:
            nxt = pending.wait()
        for qs, ks, block in pairs:
            o, s = block.forward(q[:, :, qs], kv[0][:, :, ks], kv[1][:, :, ks])
            out[:, :, qs], lse[:, :, qs] = merge_normalised(out[:, :, qs], lse[:, :, qs], o, s)
        if pending is not None:
            kv = nxt if not overlap else pending.wait()
    return out, lse


class KVRing(torch.autograd.Function):
    """The forward pass of ring and BurstAttention (they differ in backward): saves q, k, v, out, lse."""

    @staticmethod
    def forward(ctx, q, k, v, plan: Plan, overlap: bool, *mod_inputs):
        out, lse = forward_over_ring(q, k, v, plan, overlap)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan = plan
        return out.to(q.dtype)


class _Ring(KVRing):

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        plan, g = ctx.plan, ctx.plan.g
        delta = (dout.to(out.dtype) * out).sum(dim=-1)
        dq = torch.zeros(q.shape, dtype=out.dtype, device=q.device)
        d_inputs = [None] * len(plan.mod_inputs)
        kv, grads, pending_grads = [k, v], None, None
        for step, pairs in enumerate(plan.steps):
            pending = g.shift(kv, f"backward ring step {step}: passing K/V") if step + 1 < g.size else None
            dk = torch.zeros(k.shape, dtype=out.dtype, device=k.device)
            dv = torch.zeros(v.shape, dtype=out.dtype, device=v.device)
            for qs, ks, block in pairs:
                bq, bk, bv, bi = block.backward(q[:, :, qs], kv[0][:, :, ks], kv[1][:, :, ks], dout[:, :, qs],
                                                lse[:, :, qs], delta[:, :, qs])
                dq[:, :, qs] += bq
                dk[:, :, ks] += bk
                dv[:, :, ks] += bv
                d_inputs = blocks.add_grads(d_inputs, bi)
            if pending_grads is not None:
                carried = pending_grads.wait()  # in place: no third copy of the block's gradients
                dk += carried[0]
                dv += carried[1]
                del carried
            if g.size > 1:  # the block's gradients go on with it; after the last step they reach its owner
                pending_grads = g.shift([dk, dv], f"backward ring step {step}: passing dK/dV")
            else:
                grads = (dk, dv)
            if pending is not None:
                kv = pending.wait()
        if pending_grads is not None:
            grads = pending_grads.wait()
        return (dq.to(q.dtype), grads[0].to(k.dtype), grads[1].to(v.dtype), None, None,
                *input_grads(d_inputs, plan.mod_inputs))
