"""Combiner-Logsparse: Ren, Dai, Dai, Yang, Leskovec, Schuurmans, Dai, "Combiner: Full Attention
Transformer with Sparse Computation Cost" (NeurIPS 2021), section 4.2.

Combiner's factorisation (see :mod:`attnkit.families.combiner`): query ``i`` attends key by key
to a direct region ``Omega_i^0`` and reaches each other region ``Omega_i^r`` through one
abstraction, ``p(j|i) = exp(s q_i . kbar_r) / Z_i * softmax_{j in r}(s qbar_r . k_j)``, with
``kbar_r``, ``qbar_r`` the region's pooled keys and queries and ``Z_i`` summing the direct and
the abstraction scores.

**Combiner-Logsparse** takes its regions from the Logsparse Transformer's pattern, which attends
to the positions given by the suffix sums of the bits of ``i``: the past ``[0, i)`` splits into
one aligned dyadic span per set bit of ``i`` (0-indexed positions, ``b_l`` bit ``l`` of ``i``):

    Omega_i^0 = {i} and, when b_0 = 1, {i - 1}
    Omega_i^l = [ (i >> (l+1)) 2^(l+1), (i >> (l+1)) 2^(l+1) + 2^l )     for every l >= 1 with b_l = 1

i.e. the span of ``2^l`` tokens just before the part of ``i`` below bit ``l``: block
``(i >> l) - 1`` of level ``l``, where level ``l`` cuts the sequence into aligned blocks of
``2^l``. Only a level's even blocks are ever reached (by the queries of the odd block after
each); the paper counts a summary for every block, ``sum_l floor(N / 2^l)`` in all (``O(N)``), as
the ``levels`` form computes them. Each query sees at most ``log2 N`` abstractions besides its
two direct keys: ``O(N log N)`` time and memory.
The paper's 1-indexed wording (``{i - 1}`` when ``i`` is even) is the same partition.

Reading of the paper and the authors' code (``_SelfAttLogn`` in google-research/combiner): the
abstractions pool the span's keys and queries by element-wise max (``pooling="mean"``
averages), as Combiner-Fixed does; ``s`` is the call's ``scale`` in every score. Causal
self-attention only: the paper gives the bidirectional design in an appendix this module does
not follow.

Forms: ``reference`` (``p(j|i)`` materialised from the partition, float64) and ``levels``
(level by level: the complete blocks' summaries computed once, each query gathering the one
block it reaches per level). The incremental state holds every key and value (``O(N)``, as a
KV cache, because a block's summary needs all of its keys once it completes), the complete
blocks' summaries of every level, and the pooled queries of each level's partial block.
"""
from __future__ import annotations

import torch

from ..kernels.positions import repeat_kv
from ..params import Param
from ..registry import MechanismSpec, register
from .combiner import PAPER, POOLINGS, check_pooling, continued, fold_pools, partition_weights, reduce_pool


def logsparse_partition(n, device):
    """``direct`` (N, N), ``member`` (R, N) and ``reached`` (N, R) of the Logsparse plan (bools)."""
    pos = torch.arange(n, device=device)
    direct = (pos[None, :] == pos[:, None]) | ((pos[:, None] % 2 == 1) & (pos[None, :] == pos[:, None] - 1))
    members, reached = [pos.new_zeros(0, n, dtype=torch.bool)], [pos.new_zeros(n, 0, dtype=torch.bool)]
    for level in range(1, max(n - 1, 1).bit_length()):
        blocks = torch.arange(n >> level, device=device)
        members.append((pos[None, :] >> level) == blocks[:, None])
        has_bit = ((pos >> level) & 1) == 1
        reached.append(has_bit[:, None] & ((pos[:, None] >> level) - 1 == blocks[None, :]))
    return direct, torch.cat(members, dim=0), torch.cat(reached, dim=1)


def logsparse_weights(q, k, v, *, causal, mask, scale, pooling):
    """``p(j | i)`` as a ``(B, H, N, N)`` matrix, straight from the factorisation (run it in float64)."""
    check_pooling(pooling)
    direct, member, reached = logsparse_partition(q.shape[2], q.device)
    return partition_weights(q, repeat_kv(k, q.shape[1]), direct, member, reached, scale=scale, pooling=pooling)


def _reference(q, k, v, *, causal, mask, scale, pooling):
    return logsparse_weights(q, k, v, causal=causal, mask=mask, scale=scale, pooling=pooling) @ repeat_kv(
        v, q.shape[1])


class LogsparseState:
    """What a Combiner-Logsparse call leaves for the next one (a value: calls never change it).

    ``keys``, ``values`` (B, Hkv, T, .): every token so far; ``k_bar[l - 1]`` (B, Hkv, T >> l, D) and
    ``v_bar[l - 1]`` (B, H, T >> l, Dv): the pooled keys and summary values of level ``l``'s complete
    blocks; ``q_pool[l - 1]`` (B, H, D): the max (or sum) of the queries of level ``l``'s partial block,
    for ``l`` up to the bit length of ``T`` (beyond it the partial block is the whole prefix, as there).
    """

    def __init__(self, keys, values, k_bar, v_bar, q_pool):
        self.keys, self.values, self.k_bar, self.v_bar, self.q_pool = keys, values, k_bar, v_bar, q_pool

    @property
    def length(self):
        return self.keys.shape[2]

    @classmethod
    def empty(cls, q, k, v):
        return cls(k[:, :, :0], v[:, :, :0], [], [], [])

    def pool(self, level, q, pooling):
        """The pooled queries of level ``level``'s partial block (the pooling's neutral value when empty)."""
        if self.q_pool:
            return self.q_pool[min(level, len(self.q_pool)) - 1]
        return q.new_full((q.shape[0], q.shape[1], q.shape[3]), float("-inf") if pooling == "max" else 0.0)

    def summaries(self, level, q, v):
        if level <= len(self.k_bar):
            return self.k_bar[level - 1], self.v_bar[level - 1]
        B, H, _, D = q.shape
        return self.keys.new_zeros(B, self.keys.shape[1], 0, D), v.new_zeros(B, H, 0, v.shape[-1])

    def check(self, q, k, v):
        B, H, _, D = q.shape
        if (tuple(self.keys.shape[:2]) != tuple(k.shape[:2]) or self.keys.shape[-1] != D
                or self.values.shape[-1] != v.shape[-1]
                or any(tuple(p.shape) != (B, H, D) for p in self.q_pool)):
            raise ValueError("state is not a combiner_logsparse state of this batch, head count and head_dim")

    def numel(self) -> int:
        return sum(t.numel() for t in (self.keys, self.values, *self.k_bar, *self.v_bar, *self.q_pool))


def _levels(q, k, v, state, *, scale, pooling):
    """Level by level, continuing ``state``; returns the output and the state after the call."""
    B, H, Nq, D = q.shape
    m = state.length
    T = m + Nq
    keys, values = torch.cat([state.keys, k], dim=2), torch.cat([state.values, v], dim=2)
    K, V = repeat_kv(keys, H), repeat_kv(values, H)
    pos = torch.arange(m, T, device=q.device)
    previous = (pos - 1).clamp(min=0)
    scores = [scale * (q * K[:, :, m:T]).sum(-1),
              (scale * (q * K[:, :, previous]).sum(-1)).masked_fill(pos % 2 == 0, float("-inf"))]
    summaries = [V[:, :, m:T], V[:, :, previous]]
    neutral = float("-inf") if pooling == "max" else 0.0
    k_bars, v_bars, q_pools = [], [], []
    for level in range(1, T.bit_length() + 1):
        size = 1 << level
        first, last = m >> level, T >> level  # complete blocks before and after the call
        start = first * size  # where the partial block of this level began
        span = torch.cat([q.new_full((B, H, m - start, D), neutral), q], dim=2)  # queries of [start, T)
        done = (last - first) * size
        carried = state.pool(level, q, pooling)
        tail = reduce_pool(span[:, :, done:], pooling, 2)
        k_bar, v_bar = state.summaries(level, q, v)
        if last > first:
            q_bar = reduce_pool(span[:, :, :done].reshape(B, H, last - first, size, D), pooling, 3)
            q_bar = torch.cat([fold_pools(q_bar[:, :, :1], carried[:, :, None], pooling), q_bar[:, :, 1:]], dim=2)
            block_keys = keys[:, :, start:last * size].reshape(B, keys.shape[1], last - first, size, D)
            new_k_bar = block_keys.amax(dim=3) if pooling == "max" else block_keys.mean(dim=3)
            if pooling == "mean":
                q_bar = q_bar / size
            Kb = K[:, :, start:last * size].reshape(B, H, last - first, size, D)
            Vb = V[:, :, start:last * size].reshape(B, H, last - first, size, -1)
            within = torch.softmax(scale * (q_bar[:, :, :, None] * Kb).sum(-1), dim=-1)
            k_bar = torch.cat([k_bar, new_k_bar], dim=2)
            v_bar = torch.cat([v_bar, (within[..., None] * Vb).sum(3)], dim=2)
        else:
            tail = fold_pools(tail, carried, pooling)
        q_pools.append(tail)
        if last > 0:  # levels with a complete block
            k_bars.append(k_bar)
            v_bars.append(v_bar)
        reaches = ((pos >> level) & 1) == 1
        if k_bar.shape[2]:
            block = ((pos >> level) - 1).clamp(min=0)
            scores.append((scale * (q * repeat_kv(k_bar, H)[:, :, block]).sum(-1)).masked_fill(~reaches, float("-inf")))
            summaries.append(v_bar[:, :, block])
    p = torch.softmax(torch.stack(scores, dim=-1), dim=-1)  # (B, H, Nq, 2 + levels)
    out = (p[..., None] * torch.stack(summaries, dim=-2)).sum(-2)
    return out, LogsparseState(keys, values, k_bars, v_bars, q_pools)


def _levels_form(q, k, v, *, causal, mask, scale, pooling):
    check_pooling(pooling)
    return _levels(q, k, v, LogsparseState.empty(q, k, v), scale=scale, pooling=pooling)[0]


def _step(q, k, v, state, *, causal, mask, scale, pooling):
    check_pooling(pooling)
    state = continued(state, LogsparseState, "combiner_logsparse", lambda: LogsparseState.empty(q, k, v), q, k, v)
    return _levels(q, k, v, state, scale=scale, pooling=pooling)


_step.one_query_per_key = True  # a block's pooled query needs every token's query


def _flops(B, H, Nq, Nk, D, causal, **_):
    levels = max(Nk - 1, 1).bit_length()
    return 4 * B * H * Nq * (2 + levels) * D + 4 * B * H * Nk * levels * D


def _state_size(B, H, Hkv, N, D, v_dim=None, **_):
    Dv = v_dim or D
    blocks = sum(N >> level for level in range(1, N.bit_length()))
    return B * Hkv * N * (D + Dv) + B * blocks * (Hkv * D + H * Dv) + B * H * D * N.bit_length()


register(MechanismSpec(
    name="combiner_logsparse",
    family="factorised",
    papers=(PAPER,),
    patterns=frozenset({"causal-self"}),
    reference=_reference,
    fast={"levels": _levels_form},
    step=_step,
    params={"pooling": Param("max", str, "how a span's keys and queries are pooled into its abstraction",
                             choices=POOLINGS)},
    supports_mask=False,
    flops=_flops,
    state_size=_state_size,
    complexity="O(N log N)",
    weights=logsparse_weights,
    summary="Combiner-Logsparse: direct attention to the token and (odd positions) its predecessor, the rest "
            "of the past through one pooled abstraction per set bit of the position (aligned spans of 2^l)",
))
