"""Combiner-Mixture: Ren, Dai, Dai, Yang, Leskovec, Schuurmans, Dai, "Combiner: Full Attention
Transformer with Sparse Computation Cost" (NeurIPS 2021), sections 3.3 and 4.3.

Combiner's factorisation (see :mod:`attnkit.families.combiner`) makes the attention over each
region ``Omega_i^r`` rank one. The paper raises the rank with a mixture of factorisation plans
``omega_1 .. omega_M`` (after the mixture of softmaxes):

    A(x_i) = 1/M sum_m A(x_i; omega_m)

each ``A(x_i; omega_m)`` being Combiner's output ``sum_{j in Omega^0} p(j|i) v_j +
sum_r p(Omega^r|i) vbar_r`` under plan ``omega_m``, with its own normaliser ``Z_i``. Two
components are enough, the paper finds; here they are the two axial plans of section 4.3. The
sequence is laid out row-major in rows of ``row_len`` tokens; a query at ``(r, c)`` attends key by
key to the sparse axial pattern, its own row up to itself and its own column above it:

    Omega_i^0 = {(r, c') : c' <= c}  u  {(t, c) : t < r}                       (both plans)
    vertical   Omega_i^{c'} = {(t, c') : t < r}        for every column c' != c  (the column above)
    horizontal Omega_i^{t}  = {(t, c') : c' != c}      for every row t < r       (the row, less col c)

Each region's abstraction pools its keys and queries (element-wise max, or mean):
``kbar = pool k_j``, ``qbar = pool q_j``, ``vbar = sum_j softmax_j(s qbar . k_j) v_j``. A vertical
region is a column prefix (the authors compute its pools with a cumulative max), a horizontal one
a row less one column. Every earlier key gets positive weight in both plans, and the weights sum to
one: full attention at ``O(N (row_len + N / row_len))``.

Reading of the paper and the authors' code: the paper states the mixture and the plans but not
which plans its Combiner-Mixture mixes; the authors' ``axial_mixture_unidir`` mixes these two (it
splits each horizontal region at column ``c`` into a left and a right span and puts all scores in
one softmax instead of averaging two). This module follows the paper's equations: one region per
earlier row, and the average of the two plans' outputs. Causal self-attention only; ``s`` is the
call's ``scale`` in every score.

Forms: ``reference`` (``p(j|i)`` of each plan materialised, averaged; float64) and ``rows`` (the
row-major layout as a (rows, row_len) grid: column prefixes and rows-less-one-column pooled in
place). The incremental state holds the complete rows' keys and values (``O(N)``, as a KV cache:
the column above a query is attended key by key and summarised anew for every row), each
column's pooled keys and queries, each complete row's abstractions less each column, and the
current row's queries, keys and values.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels.positions import repeat_kv
from ..params import Param
from ..registry import MechanismSpec, register
from ..validation import check_int
from .combiner import (PAPER, POOLINGS, check_pooling, continued, fold_pools, partition_weights, reduce_pool,
                       row_grid)


def axial_partitions(n, row_len, device):
    """``direct`` (N, N) and the (``member`` (R, N), ``reached`` (N, R)) pairs of the vertical and horizontal plans."""
    pos = torch.arange(n, device=device)
    row, col = pos // row_len, pos % row_len
    rows = -(-n // row_len)
    same_col = col[:, None] == col[None, :]
    direct = ((row[:, None] == row[None, :]) & (pos[None, :] <= pos[:, None])) | (
        same_col & (row[None, :] < row[:, None]))
    r, c = torch.arange(1, rows, device=device)[:, None], torch.arange(row_len, device=device)[None, :]
    region_row, region_col = r.expand(-1, row_len).reshape(-1), c.expand(rows - 1, -1).reshape(-1)
    vertical = ((col[None, :] == region_col[:, None]) & (row[None, :] < region_row[:, None]),
                (row[:, None] == region_row[None, :]) & (col[:, None] != region_col[None, :]))
    full_rows = n // row_len if row_len > 1 else 0  # a row less one column is empty when rows are one token
    t, c = torch.arange(full_rows, device=device)[:, None], torch.arange(row_len, device=device)[None, :]
    region_row, region_col = t.expand(-1, row_len).reshape(-1), c.expand(full_rows, -1).reshape(-1)
    horizontal = ((row[None, :] == region_row[:, None]) & (col[None, :] != region_col[:, None]),
                  (row[:, None] > region_row[None, :]) & (col[:, None] == region_col[None, :]))
    return direct, vertical, horizontal


def mixture_weights(q, k, v, *, causal, mask, scale, row_len, pooling):
    """``p(j | i)`` of the mixture, ``(B, H, N, N)``: the two plans' matrices averaged (run it in float64)."""
    check_int("row_len", row_len)
    check_pooling(pooling)
    keys = repeat_kv(k, q.shape[1])
    direct, *plans = axial_partitions(q.shape[2], row_len, q.device)
    return sum(partition_weights(q, keys, direct, member, reached, scale=scale, pooling=pooling)
               for member, reached in plans) / len(plans)


def _reference(q, k, v, *, causal, mask, scale, row_len, pooling):
    return mixture_weights(q, k, v, causal=causal, mask=mask, scale=scale, row_len=row_len,
                           pooling=pooling) @ repeat_kv(v, q.shape[1])


def _row_less_column_pool(x, pooling):
    """``x`` (B, H, R, W, D) -> the pool over row ``t`` less column ``c``, at ``(t, c)`` (W = 1: zeros)."""
    W = x.shape[3]
    if W == 1:
        return torch.zeros_like(x)
    if pooling == "mean":
        return (x.sum(dim=3, keepdim=True) - x) / (W - 1)
    left = F.pad(torch.cummax(x, dim=3).values[:, :, :, :-1], (0, 0, 1, 0), value=float("-inf"))
    right = F.pad(torch.cummax(x.flip(3), dim=3).values.flip(3)[:, :, :, 1:], (0, 0, 0, 1), value=float("-inf"))
    return torch.maximum(left, right)


def _columns_above(x, carried, pooling):
    """The pool (max, or sum) of each column over every row before each of the call's rows ``x`` (B, H, R, W, D),
    ``carried`` holding the rows before the call."""
    inclusive = torch.cummax(x, dim=2).values if pooling == "max" else torch.cumsum(x, dim=2)
    return torch.cat([carried[:, :, None], fold_pools(inclusive[:, :, :-1], carried[:, :, None], pooling)], dim=2)


class MixtureState:
    """What a Combiner-Mixture call leaves for the next one (a value: calls never change it).

    ``keys``, ``values`` (B, Hkv, C, W, .): the ``C`` complete rows; ``k_col`` (B, Hkv, W, D), ``q_col``
    (B, H, W, D): each column's keys and queries pooled over them (max, or sum); ``k_row`` (B, Hkv, C, W, D),
    ``v_row`` (B, H, C, W, Dv): each complete row's abstractions less each column; ``q_tail`` (B, H, m, D),
    ``k_tail``, ``v_tail`` (B, Hkv, m, .): the current row.
    """

    def __init__(self, keys, values, k_col, q_col, k_row, v_row, q_tail, k_tail, v_tail):
        self.keys, self.values, self.k_col, self.q_col = keys, values, k_col, q_col
        self.k_row, self.v_row, self.q_tail, self.k_tail, self.v_tail = k_row, v_row, q_tail, k_tail, v_tail

    @property
    def length(self):
        return self.keys.shape[2] * self.keys.shape[3] + self.k_tail.shape[2]

    @classmethod
    def empty(cls, q, k, v, row_len, pooling):
        (B, H, _, D), Hkv, Dv = q.shape, k.shape[1], v.shape[-1]
        neutral = float("-inf") if pooling == "max" else 0.0
        return cls(k.new_zeros(B, Hkv, 0, row_len, D), v.new_zeros(B, Hkv, 0, row_len, Dv),
                   k.new_full((B, Hkv, row_len, D), neutral), q.new_full((B, H, row_len, D), neutral),
                   k.new_zeros(B, Hkv, 0, row_len, D), v.new_zeros(B, H, 0, row_len, Dv), q[:, :, :0], k[:, :, :0],
                   v[:, :, :0])

    def check(self, q, k, v, row_len):
        (B, H, _, D), Hkv = q.shape, k.shape[1]
        if (tuple(self.q_col.shape) != (B, H, row_len, D) or tuple(self.k_col.shape) != (B, Hkv, row_len, D)
                or self.values.shape[-1] != v.shape[-1] or self.k_tail.shape[2] >= row_len):
            raise ValueError("state is not a combiner_mixture state of this batch, head count, head_dim and row_len")

    def numel(self) -> int:
        return sum(t.numel() for t in (self.keys, self.values, self.k_col, self.q_col, self.k_row, self.v_row,
                                       self.q_tail, self.k_tail, self.v_tail))


def _rows(q, k, v, state, *, scale, row_len, pooling):
    """Row by row on the (rows, row_len) grid, continuing ``state``; returns the output and the state after."""
    W, (B, H, Nq, _) = row_len, q.shape
    m, C = state.k_tail.shape[2], state.keys.shape[2]  # tokens of the current row consumed, complete rows
    T = m + Nq
    R, full = -(-T // W), T // W
    Q, K_kv, V_kv = (row_grid(torch.cat(pair, dim=2), W) for pair in ((state.q_tail, q), (state.k_tail, k),
                                                                       (state.v_tail, v)))
    K, V = repeat_kv(K_kv, H), repeat_kv(V_kv, H)
    K_all, V_all = torch.cat([repeat_kv(state.keys, H), K], dim=2), torch.cat([repeat_kv(state.values, H), V], dim=2)
    rows, cols = torch.arange(R, device=q.device), torch.arange(W, device=q.device)
    has_key = (rows[:, None] * W + cols[None, :] < T)[:, None, :]  # (R, 1, W)
    above = (C + rows)[:, None]  # (R, 1): rows before each of the call's rows
    before = torch.arange(C + R, device=q.device)[None, :] < above  # (R, C + R)
    column = lambda a, b: scale * torch.einsum("bhrcd,bhtcd->bhrct", a, b)  # noqa: E731  (r, c) with (t, c)
    row_scores = (scale * Q @ K.transpose(-1, -2)).masked_fill(
        ~(has_key & torch.ones(W, W, dtype=torch.bool, device=q.device).tril()), float("-inf"))
    col_scores = column(Q, K_all).masked_fill(~before[:, None, :], float("-inf"))

    # vertical: the column above, (t, c') for t < r, summarised at (r, c'); the first row has none (kept finite)
    q_above = _columns_above(Q, state.q_col, pooling)
    k_above = repeat_kv(_columns_above(K_kv, state.k_col, pooling), H)
    if pooling == "mean":
        q_above, k_above = (x / above.clamp(min=1)[..., None].to(x.dtype) for x in (q_above, k_above))
    none_above = (above == 0)[..., None]  # (R, 1, 1)
    q_above, k_above = q_above.masked_fill(none_above, 0.0), k_above.masked_fill(none_above, 0.0)
    fake = (above == 0) & (torch.arange(C + R, device=q.device)[None, :] == 0)
    within = torch.softmax(column(q_above, K_all).masked_fill(~(before | fake)[:, None, :], float("-inf")), dim=-1)
    v_above = torch.einsum("bhrct,bhtcd->bhrcd", within, V_all)
    other_col = (cols[None, :] != cols[:, None])[None] & ~none_above  # (R, W, W)
    vertical_scores = (scale * Q @ k_above.transpose(-1, -2)).masked_fill(~other_col, float("-inf"))

    # horizontal: row t less column c, summarised at (t, c), reached from (r, c) for every complete t < r
    q_less, k_less = _row_less_column_pool(Q, pooling), _row_less_column_pool(K_kv, pooling)
    less_col = (cols[None, :] != cols[:, None]) | torch.tensor(W == 1, device=q.device)
    complete = (rows < full)[:, None, None]  # a partial row is never reached (kept finite)
    within = torch.softmax((scale * q_less @ K.transpose(-1, -2)).masked_fill(
        ~(less_col & has_key | ~complete), float("-inf")), dim=-1)
    k_row = torch.cat([state.k_row, k_less], dim=2)
    v_row = torch.cat([state.v_row, within @ V], dim=2)
    reach = before & (torch.arange(C + R, device=q.device) < C + full) & torch.tensor(W > 1, device=q.device)
    horizontal_scores = column(Q, repeat_kv(k_row, H)).masked_fill(~reach[:, None, :], float("-inf"))

    def plan(region_scores, region_values, equation):
        p = torch.softmax(torch.cat([row_scores, col_scores, region_scores], dim=-1), dim=-1)
        out = p[..., :W] @ V + torch.einsum("bhrct,bhtcd->bhrcd", p[..., W:W + C + R], V_all)
        return out + torch.einsum(equation, p[..., W + C + R:], region_values)

    out = (plan(vertical_scores, v_above, "bhrce,bhred->bhrcd") + plan(horizontal_scores, v_row, "bhrct,bhtcd->bhrcd"))
    out = (out / 2).reshape(B, H, R * W, -1)[:, :, m:T]
    new_state = MixtureState(
        torch.cat([state.keys, K_kv[:, :, :full]], dim=2), torch.cat([state.values, V_kv[:, :, :full]], dim=2),
        fold_pools(state.k_col, reduce_pool(K_kv[:, :, :full], pooling, 2), pooling),
        fold_pools(state.q_col, reduce_pool(Q[:, :, :full], pooling, 2), pooling),
        k_row[:, :, :C + full], v_row[:, :, :C + full],
        *(torch.cat(pair, dim=2)[:, :, full * W:] for pair in ((state.q_tail, q), (state.k_tail, k),
                                                              (state.v_tail, v))))
    return out, new_state


def _check(row_len, pooling):
    check_int("row_len", row_len)
    check_pooling(pooling)


def _rows_form(q, k, v, *, causal, mask, scale, row_len, pooling):
    _check(row_len, pooling)
    return _rows(q, k, v, MixtureState.empty(q, k, v, row_len, pooling), scale=scale, row_len=row_len,
                 pooling=pooling)[0]


def _step(q, k, v, state, *, causal, mask, scale, row_len, pooling):
    _check(row_len, pooling)
    state = continued(state, MixtureState, "combiner_mixture", lambda: MixtureState.empty(q, k, v, row_len, pooling),
                      q, k, v, row_len)
    return _rows(q, k, v, state, scale=scale, row_len=row_len, pooling=pooling)


_step.one_query_per_key = True  # a row's and a column's abstractions need every token's query


def _flops(B, H, Nq, Nk, D, causal, row_len=64, **_):
    rows = -(-Nk // row_len)
    return 4 * B * H * Nq * (4 * row_len + 4 * rows) * D


def _state_size(B, H, Hkv, N, D, v_dim=None, row_len=64, **_):
    Dv = v_dim or D
    full, tail = divmod(N, row_len)
    return (B * full * row_len * (Hkv * (2 * D + Dv) + H * Dv) + B * row_len * D * (Hkv + H)
            + B * tail * (H * D + Hkv * (D + Dv)))


register(MechanismSpec(
    name="combiner_mixture",
    family="factorised",
    papers=(PAPER,),
    patterns=frozenset({"causal-self"}),
    reference=_reference,
    fast={"rows": _rows_form},
    step=_step,
    params={"row_len": Param(64, int, "tokens per row of the row-major layout (sqrt(N) gives O(N sqrt N))", low=1),
            "pooling": Param("max", str, "how a region's keys and queries are pooled into its abstraction",
                             choices=POOLINGS)},
    test_params={"row_len": 8},
    supports_mask=False,
    flops=_flops,
    state_size=_state_size,
    complexity="O(N (r + N / r))",
    weights=mixture_weights,
    summary="Combiner-Mixture: the average of two Combiner factorisations of the sparse axial pattern, the "
            "earlier rows reached once per column (vertical) and once per row less the query's column "
            "(horizontal), each plan with its own softmax",
))
