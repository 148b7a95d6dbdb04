"""Star Attention: block-local context encoding with an anchor block, then global attention for the query.

Acharya, Jia & Ginsburg, "Star Attention: Efficient LLM Inference over Long
Sequences". The context is split in contiguous blocks, one per rank; the query
(the tokens after the context) is on every rank.

- Phase 1, context encoding: every rank attends its block to the *anchor block*
  (rank 0's block, broadcast once) followed by its own block, causally; the
  anchor's own outputs are discarded. Rank 0 is its own anchor. Context tokens
  thus see the anchor and their own block, not the blocks in between: this is
  the paper's approximation, and the single-process equivalent is attention
  with that block mask.
- Phase 2, query encoding: every rank computes the query's attention over its
  context block with its log-sum-exp, the last rank also over the query itself
  (causally); an all-gather and the exact log-sum-exp merge give every rank the
  query's output, which equals full causal attention over context + query.

Backward is written out so that every rank calls the same collectives in the
same order: an all-reduce brings the anchor's key/value gradients to rank 0,
and an all-reduce sums the replicated query's q/k/v gradients (every rank holds
them, as it holds the query's output, whose gradient must be the same on every rank).
"""
from __future__ import annotations

import torch

from ..kernels.online_softmax import merge_normalised
from ..validation import check_qkv, check_scale
from . import blocks
from .comm import Group

CHUNK = 128


def star_attention(q, k, v, query_q, query_k, query_v, *, group=None, scale: float | None = None):
    """``(context output shard, query output)`` of Star Attention.

    Args:
        q, k, v: this rank's contiguous context block ``(B, H, n, D)`` / ``(B, Hkv, n, .)``
            (rank r holds positions ``[r n, (r + 1) n)``).
        query_q, query_k, query_v: the query tokens ``(B, H, m, D)`` / ``(B, Hkv, m, .)``, the same on
            every rank (positions ``P n ..``).
    Returns:
        this rank's context outputs ``(B, H, n, Dv)`` and the query's outputs ``(B, H, m, Dv)`` (on every rank).
    """
    g = Group(group, "star_attention")
    check_qkv(q, k, v)
    check_qkv(query_q, query_k, query_v)
    if q.shape[2] != k.shape[2] or query_q.shape[2] != query_k.shape[2]:
        raise ValueError("star_attention is self-attention: q and k must have the same length, for the context "
                         "block and for the query")
    if query_k.shape[1] != k.shape[1] or query_q.shape[1] != q.shape[1] or query_q.shape[-1] != q.shape[-1]:
        raise ValueError("the query's heads and head_dim must match the context's")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"q has {q.shape[1]} heads, not a multiple of k's {k.shape[1]} (GQA groups)")
    scale = check_scale(scale, q.shape[-1])
    B, H, n, D = q.shape
    g.agree([B, H, k.shape[1], n, D, v.shape[-1], query_q.shape[2]],
            ["batch", "heads", "kv heads", "context block length", "head_dim", "value head_dim", "query length"],
            q.device)
    return _Star.apply(q, k, v, query_q, query_k, query_v, g, scale)


def _block(kind, q_start, q_len, k_start, k_len, scale, device):
    mask = blocks.build_mask(causal=True, window=None, doc_ids=None, mask_mod=None) if kind == blocks.PARTIAL else None
    q_pos = torch.arange(q_start, q_start + q_len, device=device)
    k_pos = torch.arange(k_start, k_start + k_len, device=device)
    return blocks.Block(mask, kind, q_pos, k_pos, scale, CHUNK)


class _Star(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, qq, kq, vq, g: Group, scale: float):
        n, m, dev = q.shape[2], qq.shape[2], q.device
        start, end = g.rank * n, g.size * n
        anchor_k, anchor_v = (g.broadcast(t, 0, "broadcast of the anchor block") for t in (k, v))
        own = _block(blocks.PARTIAL, start, n, start, n, scale, dev)
        out, lse = own.forward(q, k, v)
        anchor = _block(blocks.FULL, start, n, 0, n, scale, dev) if g.rank > 0 else None
        if anchor is not None:
            out, lse = merge_normalised(out, lse, *anchor.forward(q, anchor_k, anchor_v))
        to_context = _block(blocks.FULL, end, m, start, n, scale, dev)
        q_out, q_lse = to_context.forward(qq, k, v)
        to_self = _block(blocks.PARTIAL, end, m, end, m, scale, dev) if g.rank == g.size - 1 else None
        if to_self is not None:
            q_out, q_lse = merge_normalised(q_out, q_lse, *to_self.forward(qq, kq, vq))
        merged_out, merged_lse = q_out, q_lse
        if g.size > 1:
            outs = g.all_gather(q_out, "all-gather of the query's partial outputs")
            lses = g.all_gather(q_lse, "all-gather of the query's log-sum-exps")
            merged_out, merged_lse = outs[0], lses[0]
            for o, s in zip(outs[1:], lses[1:]):
                merged_out, merged_lse = merge_normalised(merged_out, merged_lse, o, s)
        ctx.save_for_backward(q, k, v, qq, kq, vq, anchor_k, anchor_v, out, lse, merged_out, merged_lse)
        ctx.g, ctx.blocks = g, (own, anchor, to_context, to_self)
        return out.to(q.dtype), merged_out.to(q.dtype)

    @staticmethod
    def backward(ctx, d_out, d_query_out):
        q, k, v, qq, kq, vq, anchor_k, anchor_v, out, lse, q_out, q_lse = ctx.saved_tensors
        g, (own, anchor, to_context, to_self) = ctx.g, ctx.blocks
        delta = (d_out.to(out.dtype) * out).sum(dim=-1)
        dq, dk, dv, _ = own.backward(q, k, v, d_out, lse, delta)
        d_anchor_k, d_anchor_v = torch.zeros_like(dk), torch.zeros_like(dv)
        if anchor is not None:
            dq_a, d_anchor_k, d_anchor_v, _ = anchor.backward(q, anchor_k, anchor_v, d_out, lse, delta)
            dq = dq + dq_a
        q_delta = (d_query_out.to(q_out.dtype) * q_out).sum(dim=-1)
        dqq, dk_q, dv_q, _ = to_context.backward(qq, k, v, d_query_out, q_lse, q_delta)
        dk, dv = dk + dk_q, dv + dv_q
        dkq, dvq = torch.zeros(kq.shape, dtype=dk.dtype, device=kq.device), torch.zeros(vq.shape, dtype=dv.dtype,
                                                                                          device=vq.device)
        if to_self is not None:
            dqq_s, dkq, dvq, _ = to_self.backward(qq, kq, vq, d_query_out, q_lse, q_delta)
            dqq = dqq + dqq_s
        if g.size > 1:
            for t, what in ((d_anchor_k, "anchor keys"), (d_anchor_v, "anchor values"), (dqq, "query q"),
                            (dkq, "query k"), (dvq, "query v")):
                g.all_reduce(t, f"all-reduce of the {what}' gradients")
        if g.rank == 0:
            dk, dv = dk + d_anchor_k, dv + d_anchor_v
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dqq.to(qq.dtype), dkq.to(kq.dtype),
                dvq.to(vq.dtype), None, None)
