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
place).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels.positions import repeat_kv
from ..params import Param
from ..registry import MechanismSpec, register
from ..validation import check_int
from .combiner import PAPER, POOLINGS, check_pooling, partition_weights


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


def _column_prefix_pool(x, pooling):
    """``x`` (B, H, R, W, D) -> the pool over rows ``t < r`` of each column, at ``(r, c)`` (row 0: zeros)."""
    if pooling == "max":
        pooled = torch.cummax(x, dim=2).values
    else:
        count = torch.arange(1, x.shape[2] + 1, device=x.device, dtype=x.dtype)[:, None, None]
        pooled = torch.cumsum(x, dim=2) / count
    return F.pad(pooled[:, :, :-1], (0, 0, 0, 0, 1, 0))


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


def _rows_form(q, k, v, *, causal, mask, scale, row_len, pooling):
    check_int("row_len", row_len)
    check_pooling(pooling)
    W, (B, H, N, D) = row_len, q.shape
    R = -(-N // W)
    pad = R * W - N
    grid = lambda x: F.pad(x, (0, 0, 0, pad)).reshape(B, H, R, W, -1)  # noqa: E731
    Q, K, V = grid(q), grid(repeat_kv(k, H)), grid(repeat_kv(v, H))
    full = torch.arange(R, device=q.device)[:, None] < N // W  # (R, 1): complete rows
    rows, cols = torch.arange(R, device=q.device), torch.arange(W, device=q.device)
    has_key = (rows[:, None] * W + cols[None, :] < N)[:, None, :]  # (R, 1, W)
    earlier = rows[None, :] < rows[:, None]  # (R, R): row t before row r
    row_scores = (scale * Q @ K.transpose(-1, -2)).masked_fill(
        ~(has_key & torch.ones(W, W, dtype=torch.bool, device=q.device).tril()), float("-inf"))
    col_scores = (scale * torch.einsum("brcd,btcd->brct", Q.flatten(0, 1), K.flatten(0, 1))).reshape(
        B, H, R, W, R).masked_fill(~earlier[:, None, :], float("-inf"))

    def summaries(q_bar, allowed):  # vbar = softmax over the region's keys of (s qbar . k) v
        return torch.softmax((scale * q_bar @ K.transpose(-1, -2)).masked_fill(~allowed, float("-inf")), -1) @ V

    # vertical: the column above, (t, c') for t < r, summarised at (r, c'); row 0 has none (kept finite)
    qv, kv = _column_prefix_pool(Q, pooling), _column_prefix_pool(K, pooling)
    above = earlier | (rows[:, None] == 0) & (rows[None, :] == 0)  # (R, R)
    vv = torch.softmax((scale * torch.einsum("brcd,btcd->brct", qv.flatten(0, 1), K.flatten(0, 1))).reshape(
        B, H, R, W, R).masked_fill(~above[:, None, :], float("-inf")), dim=-1)
    vv = torch.einsum("bhrct,bhtcd->bhrcd", vv, V)
    other_col = (cols[None, :] != cols[:, None])[None, :, :] & (rows[:, None, None] > 0)  # (R, W, W)
    vertical_scores = (scale * Q @ kv.transpose(-1, -2)).masked_fill(~other_col, float("-inf"))
    # horizontal: row t less column c, summarised at (t, c), reached from (r, c) for every complete t < r
    qh, kh = _row_less_column_pool(Q, pooling), _row_less_column_pool(K, pooling)
    less_col = (cols[None, :] != cols[:, None]) | torch.tensor(W == 1, device=q.device)
    vh = summaries(qh, less_col & has_key | ~full[:, :, None])  # a partial row is never reached (kept finite)
    reach = earlier & full.T & torch.tensor(W > 1, device=q.device)  # (R, R)
    horizontal_scores = (scale * torch.einsum("brcd,btcd->brct", Q.flatten(0, 1), kh.flatten(0, 1))).reshape(
        B, H, R, W, R).masked_fill(~reach[:, None, :], float("-inf"))

    def plan(region_scores, region_values, equation):
        p = torch.softmax(torch.cat([row_scores, col_scores, region_scores], dim=-1), dim=-1)
        out = p[..., :W] @ V + torch.einsum("bhrct,bhtcd->bhrcd", p[..., W:W + R], V)
        return out + torch.einsum(equation, p[..., W + R:], region_values)

    out = (plan(vertical_scores, vv, "bhrce,bhred->bhrcd") + plan(horizontal_scores, vh, "bhrct,bhtcd->bhrcd")) / 2
    return out.reshape(B, H, R * W, -1)[:, :, :N]


def _flops(B, H, Nq, Nk, D, causal, row_len=64, **_):
    rows = -(-Nk // row_len)
    return 4 * B * H * Nq * (4 * row_len + 4 * rows) * D


register(MechanismSpec(
    name="combiner_mixture",
    family="factorised",
    papers=(PAPER,),
    patterns=frozenset({"causal-self"}),
    reference=_reference,
    fast={"rows": _rows_form},
    params={"row_len": Param(64, int, "tokens per row of the row-major layout (sqrt(N) gives O(N sqrt N))", low=1),
            "pooling": Param("max", str, "how a region's keys and queries are pooled into its abstraction",
                             choices=POOLINGS)},
    test_params={"row_len": 8},
    supports_mask=False,
    flops=_flops,
    complexity="O(N (r + N / r))",
    weights=mixture_weights,
    summary="Combiner-Mixture: the average of two Combiner factorisations of the sparse axial pattern, the "
            "earlier rows reached once per column (vertical) and once per row less the query's column "
            "(horizontal), each plan with its own softmax",
))
