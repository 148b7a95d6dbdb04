"""Combiner-Fixed: Ren, Dai, Dai, Yang, Leskovec, Schuurmans, Dai, "Combiner: Full Attention
Transformer with Sparse Computation Cost" (NeurIPS 2021).

Combiner reads attention as a conditional expectation, ``A(x_i) = E_{p(j|i)}[v_j]``, and
factorises ``p(j|i)`` so that every query still reaches every key it may see, at sparse cost.
The support ``Omega_i`` of query ``i`` is partitioned into a *direct* region ``Omega_i^0``,
attended key by key, and regions ``Omega_i^r`` reached through one *abstraction* each:

    p(j | i) = exp(s q_i . k_j) / Z_i                              j in Omega_i^0
    p(j | i) = exp(s q_i . kbar_r) / Z_i * q(j | Omega_r)          j in Omega_i^r
    Z_i      = sum_{j in Omega_i^0} exp(s q_i . k_j) + sum_r exp(s q_i . kbar_r)
    q(j | Omega_r) = softmax_{j in Omega_r}(s qbar_r . k_j)        (shared by all queries)

so ``A(x_i) = sum_{j in Omega^0} p(j|i) v_j + sum_r p(Omega_r|i) vbar_r`` with the region's
summary value ``vbar_r = sum_{j in Omega_r} q(j|Omega_r) v_j``, and the weights sum to one over
all of ``Omega_i``: full attention, not a window.

**Combiner-Fixed** (the paper's section 4.1, the authors' ``sqrt_fixed_full``) cuts the
sequence into segments of ``segment_size`` tokens (``sqrt(N)`` gives ``O(N sqrt N)``). The
direct region is the query's own segment (causal: its keys up to the query); every other
segment it may see is one region (causal: the segments before its own). The abstractions
pool each segment: ``kbar_r = pool_{j in r} k_j`` and ``qbar_r = pool_{j in r} q_j``, with
``pool`` the element-wise max (the authors' default, ``identity-max``) or the mean.

Conventions: ``s`` is the call's ``scale`` in all three scores; a GQA group's query heads share
the kv head's ``kbar``, while ``qbar`` and hence ``vbar`` are per query head. In non-causal
attention the query's own segment is its direct region only (the partition of ``Omega_i`` is
exact; the authors' non-causal code also adds the own segment's summary). The last segment
may be partial; its pools run over the tokens present.

Forms: ``reference`` (the matrix ``p(j|i)`` materialised from the equations, float64) and
``segments`` (per segment: ``O(N (segment_size + N / segment_size))`` time and memory). The
incremental state holds the complete segments' ``kbar`` and ``vbar``, the keys and values of
the current partial segment and the pool of its queries: ``O(segment_size + N / segment_size)``
numbers, because ``qbar`` needs the queries of tokens already consumed.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from ..kernels.positions import repeat_kv
from ..params import Param
from ..registry import MechanismSpec, register
from ..validation import check_int

PAPER = "Combiner: Full Attention Transformer with Sparse Computation Cost"
POOLINGS = ("max", "mean")


def check_pooling(pooling):
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def _check(segment_size, pooling):
    check_int("segment_size", segment_size)
    check_pooling(pooling)


def pool(x, member, pooling):
    """``x`` (B, H, N, D) pooled over each region's members (``member`` (R, N) bool) -> (B, H, R, D)."""
    if pooling == "max":
        filled = x[:, :, None].masked_fill(~member[:, :, None], float("-inf"))
        return filled.amax(dim=3)
    weights = member.to(x.dtype) / member.sum(-1, keepdim=True).to(x.dtype)
    return weights @ x


def reduce_pool(x, pooling, dim):
    """``x`` pooled along ``dim`` into a running abstraction: the max, or the sum (a mean's numerator); over no
    element, the pool's neutral value (-inf, or 0)."""
    if pooling == "mean":
        return x.sum(dim=dim)
    if x.shape[dim] == 0:
        return x.new_full(x.shape[:dim] + x.shape[dim + 1:], float("-inf"))
    return x.amax(dim=dim)


def fold_pools(a, b, pooling):
    """Two running pools of disjoint tokens as one: their max, or their sum."""
    return torch.maximum(a, b) if pooling == "max" else a + b


def row_grid(x, row_len):
    """``x`` (B, h, T, d) padded with zeros to whole rows of ``row_len`` tokens -> (B, h, rows, row_len, d)."""
    rows = -(-x.shape[2] // row_len)
    return F.pad(x, (0, 0, 0, rows * row_len - x.shape[2])).reshape(x.shape[0], x.shape[1], rows, row_len, -1)


def continued(state, state_type, name, empty, *call):
    """The state a step continues: ``empty()`` when there is none, else ``state`` checked against ``call``."""
    if state is None:
        return empty()
    if not isinstance(state, state_type):
        raise TypeError(f"state must be a {name} state, got {type(state).__name__}")
    state.check(*call)
    return state


def partition_weights(q, keys, direct, member, reached, *, scale, pooling):
    """``p(j | i)`` (B, H, N, N) of one factorisation plan, straight from the equations (run it in float64).

    ``direct`` (N, N): ``j in Omega_i^0``; ``member`` (R, N): the tokens of region ``r`` (none empty);
    ``reached`` (N, R): region ``r`` is one of query ``i``'s ``Omega_i^r``. ``keys`` has the query heads.
    """
    q_bar, k_bar = pool(q, member, pooling), pool(keys, member, pooling)
    direct_scores = (scale * q @ keys.transpose(-1, -2)).masked_fill(~direct, float("-inf"))
    region_scores = (scale * q @ k_bar.transpose(-1, -2)).masked_fill(~reached, float("-inf"))
    log_z = torch.logsumexp(torch.cat([direct_scores, region_scores], dim=-1), dim=-1, keepdim=True)
    within = torch.softmax((scale * q_bar @ keys.transpose(-1, -2)).masked_fill(~member, float("-inf")), dim=-1)
    return (direct_scores - log_z).exp() + (region_scores - log_z).exp() @ within


def combiner_weights(q, k, v, *, causal, mask, scale, segment_size, pooling):
    """``p(j | i)`` as a ``(B, H, N, N)`` matrix, straight from the factorisation (run it in float64)."""
    _check(segment_size, pooling)
    N = q.shape[2]
    pos = torch.arange(N, device=q.device)
    seg = pos // segment_size
    regions = torch.arange(-(-N // segment_size), device=q.device)
    member = seg[None, :] == regions[:, None]  # (R, N): the tokens of region r
    direct = seg[:, None] == seg[None, :]  # Omega_i^0
    reached = regions[None, :] != seg[:, None]  # the regions Omega_i^r
    if causal:
        direct = direct & (pos[None, :] <= pos[:, None])
        reached = regions[None, :] < seg[:, None]
    return partition_weights(q, repeat_kv(k, q.shape[1]), direct, member, reached, scale=scale, pooling=pooling)


def _reference(q, k, v, *, causal, mask, scale, segment_size, pooling):
    return combiner_weights(q, k, v, causal=causal, mask=mask, scale=scale, segment_size=segment_size,
                            pooling=pooling) @ repeat_kv(v, q.shape[1])


class CombinerState:
    """What a causal Combiner call leaves for the next one (a value: calls never change it).

    ``k_bar`` (B, Hkv, C, D) and ``v_bar`` (B, H, C, Dv): the pooled keys and summary values of the
    ``C`` complete segments; ``k_tail``, ``v_tail`` (B, Hkv, m, .): the current partial segment's
    keys and values; ``q_pool`` (B, H, D): the max (or sum) of its queries.
    """

    def __init__(self, length, k_bar, v_bar, k_tail, v_tail, q_pool):
        self.length = length
        self.k_bar, self.v_bar, self.k_tail, self.v_tail, self.q_pool = k_bar, v_bar, k_tail, v_tail, q_pool

    @classmethod
    def empty(cls, q, k, v):
        B, H, _, D = q.shape
        Hkv, Dv = k.shape[1], v.shape[-1]
        return cls(0, k.new_zeros(B, Hkv, 0, D), v.new_zeros(B, H, 0, Dv), k.new_zeros(B, Hkv, 0, D),
                   v.new_zeros(B, Hkv, 0, Dv), q.new_zeros(B, H, D))

    def check(self, q, k, v, segment_size):
        B, H, _, D = q.shape
        if (tuple(self.q_pool.shape) != (B, H, D) or tuple(self.k_tail.shape[:2]) != tuple(k.shape[:2])
                or self.v_tail.shape[-1] != v.shape[-1] or self.length % segment_size != self.k_tail.shape[2]):
            raise ValueError("state is not a combiner state of this batch, head count, head_dim and segment_size")

    def numel(self) -> int:
        return sum(t.numel() for t in (self.k_bar, self.v_bar, self.k_tail, self.v_tail, self.q_pool))


def _segments(q, k, v, state, *, causal, scale, segment_size, pooling):
    """Segment by segment, continuing ``state`` (causal); returns the output and the state after the call."""
    s = segment_size
    B, H, Nq, D = q.shape
    m = state.k_tail.shape[2]  # tokens of the partial segment already consumed
    T = m + Nq
    R = -(-T // s)
    Kp = row_grid(repeat_kv(torch.cat([state.k_tail, k], dim=2), H), s)
    Vp = row_grid(repeat_kv(torch.cat([state.v_tail, v], dim=2), H), s)
    Qp = row_grid(F.pad(q, (0, 0, m, 0)), s)
    t = torch.arange(R * s, device=q.device).reshape(R, s)
    has_key, has_query = t < T, (t >= m) & (t < T)

    count = has_key.sum(-1).to(q.dtype)[:, None]  # (R, 1) tokens per segment
    if pooling == "max":
        q_raw = Qp.masked_fill(~has_query[..., None], float("-inf")).amax(dim=3)
        if m:
            q_raw = torch.cat([torch.maximum(q_raw[:, :, :1], state.q_pool[:, :, None]), q_raw[:, :, 1:]], dim=2)
        q_bar, k_bar = q_raw, Kp.masked_fill(~has_key[..., None], float("-inf")).amax(dim=3)
    else:
        q_raw = Qp.sum(dim=3)  # padded rows are zeros
        q_raw = torch.cat([q_raw[:, :, :1] + state.q_pool[:, :, None], q_raw[:, :, 1:]], dim=2)
        q_bar, k_bar = q_raw / count, Kp.sum(dim=3) / count

    within = (scale * q_bar[:, :, :, None] @ Kp.transpose(-1, -2)).squeeze(3)  # (B, H, R, s)
    v_bar = (torch.softmax(within.masked_fill(~has_key, float("-inf")), dim=-1)[:, :, :, None] @ Vp).squeeze(3)

    direct = scale * Qp @ Kp.transpose(-1, -2)  # (B, H, R, s, s)
    allowed = has_key[:, None, :].expand(R, s, s)
    if causal:
        allowed = allowed & torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
    direct = direct.masked_fill(~allowed, float("-inf"))
    C = state.k_bar.shape[2]
    all_k_bar = torch.cat([repeat_kv(state.k_bar, H), k_bar], dim=2)
    all_v_bar = torch.cat([state.v_bar, v_bar], dim=2)
    regions = torch.arange(R, device=q.device)
    own = torch.arange(R, device=q.device)[:, None]
    reached = regions[None, :] < own if causal else regions[None, :] != own  # (R, R)
    reached = torch.cat([reached.new_ones(R, C), reached], dim=1)[:, None, :]  # (R, 1, C + R)
    region = (scale * Qp @ all_k_bar[:, :, None].transpose(-1, -2)).masked_fill(~reached, float("-inf"))
    p = torch.softmax(torch.cat([direct, region], dim=-1), dim=-1)
    summaries = torch.where(reached[:, 0, :, None], all_v_bar[:, :, None], 0)  # (B, H, R, C + R, Dv): those in reach
    out = p[..., :s] @ Vp + p[..., s:] @ summaries
    out = out.reshape(B, H, R * s, -1)[:, :, m:T]

    full = T // s
    Hkv = k.shape[1]
    tail_q = q_raw[:, :, full] if T % s else q.new_zeros(B, H, D)
    new_state = CombinerState(
        state.length + Nq,
        torch.cat([state.k_bar, k_bar[:, ::H // Hkv, :full]], dim=2),
        torch.cat([state.v_bar, v_bar[:, :, :full]], dim=2),
        torch.cat([state.k_tail, k], dim=2)[:, :, full * s:],
        torch.cat([state.v_tail, v], dim=2)[:, :, full * s:],
        tail_q,
    )
    return out, new_state


def _segments_form(q, k, v, *, causal, mask, scale, segment_size, pooling):
    _check(segment_size, pooling)
    return _segments(q, k, v, CombinerState.empty(q, k, v), causal=causal, scale=scale,
                     segment_size=segment_size, pooling=pooling)[0]


def _step(q, k, v, state, *, causal, mask, scale, segment_size, pooling):
    _check(segment_size, pooling)
    state = continued(state, CombinerState, "combiner", lambda: CombinerState.empty(q, k, v), q, k, v, segment_size)
    return _segments(q, k, v, state, causal=causal, scale=scale, segment_size=segment_size, pooling=pooling)


_step.one_query_per_key = True  # a segment's pooled query needs every token's query


def _flops(B, H, Nq, Nk, D, causal, segment_size=128, **_):
    regions = -(-Nk // segment_size)
    return 4 * B * H * Nq * (segment_size + regions) * D + 4 * B * H * Nk * D


def _state_size(B, H, Hkv, N, D, v_dim=None, segment_size=128, **_):
    Dv = v_dim or D
    full, tail = divmod(N, segment_size)
    return B * full * (Hkv * D + H * Dv) + B * Hkv * tail * (D + Dv) + B * H * D


register(MechanismSpec(
    name="combiner",
    family="factorised",
    papers=(PAPER,),
    patterns=frozenset({"causal-self", "noncausal-self"}),
    reference=_reference,
    fast={"segments": _segments_form},
    step=_step,
    params={"segment_size": Param(128, int, "tokens per segment: the direct region and the unit one abstraction "
                                            "summarises (sqrt(N) gives O(N sqrt N))", low=1),
            "pooling": Param("max", str, "how a segment's keys and queries are pooled into its abstraction",
                             choices=POOLINGS)},
    test_params={"segment_size": 8},
    supports_mask=False,
    flops=_flops,
    state_size=_state_size,
    complexity="O(N (s + N / s))",
    weights=combiner_weights,
    summary="Combiner-Fixed: direct attention in the own segment, every other segment through a "
            "pooled key and a summary value, one softmax over both (full attention at sparse cost)",
))
