"""Combiner-Axial: Ren, Dai, Dai, Yang, Leskovec, Schuurmans, Dai, "Combiner: Full Attention
Transformer with Sparse Computation Cost" (NeurIPS 2021).

Combiner's factorisation (see :mod:`attnkit.families.combiner`): query ``i`` attends key by key
to a direct region ``Omega_i^0`` and reaches each other region ``Omega_i^r`` through one
abstraction, with ``p(j|i) = exp(s q_i . kbar_r) / Z_i * q(j | Omega_r)`` inside region ``r``.

**Combiner-Axial** lays the sequence out row-major in rows of ``row_len`` tokens (position
``p = row * row_len + col``) and factorises as Axial Transformers attend, along the row and
then along the column. For a query at ``(r, c)``:

    direct region      Omega_i^0 = its own row up to itself                  {(r, c') : c' <= c}
    regions            Omega_i^k = row k, for every earlier row k < r
    local expectation  q(j | Omega^k) = softmax_{j in row k}(s q_{(k,c)} . k_j)
                       (the row attention of the row-k token in the query's column, over the
                       whole row, which is all in the past)
    abstraction        kbar_{(k,c)} = sum_{j in row k} q(j | Omega^k) k_j,
                       vbar_{(k,c)} = sum_{j in row k} q(j | Omega^k) v_j

so the query attends along its column to ``(k, c)`` for ``k < r``, each carrying its row's
summary: ``A(x_i) = sum_{j in Omega^0} p(j|i) v_j + sum_{k<r} p(Omega^k | i) vbar_{(k,c)}``, one
softmax over the ``c + 1`` direct scores and the ``r`` column scores. Every earlier token gets
positive weight and the weights sum to one: full attention at ``O(N (row_len + N / row_len))``.

Reading of the paper and the authors' code (``axial_rowmajor`` in google-research/combiner,
which the paper's Combiner-Axial is): the abstraction key is the row attention's weighted sum
of the row's keys (their ``row_summary="wsum"``); their parametric variant (a learned
projection of the row output) is a layer's business, not a mechanism's. ``s`` is the call's
``scale`` in every score; the row attention uses each query head's own ``q``, so ``kbar`` and
``vbar`` are per query head. Causal self-attention only: rows before the query are complete,
whereas a non-causal query would need the column token of a partial last row.

Forms: ``reference`` (``p(j|i)`` materialised, float64) and ``rows`` (row by row). The
incremental state holds every complete row's ``kbar`` and ``vbar`` (one pair per earlier
token: ``O(N)``, as a KV cache) and the current row's queries, keys and values, because a
row's summaries need all of its queries.
"""
from __future__ import annotations

import torch

from ..kernels.positions import repeat_kv
from ..params import Param
from ..registry import MechanismSpec, register
from ..validation import check_int
from .combiner import PAPER, continued, row_grid


def axial_weights(q, k, v, *, causal, mask, scale, row_len):
    """``p(j | i)`` as a ``(B, H, N, N)`` matrix, straight from the factorisation (run it in float64)."""
    check_int("row_len", row_len)
    N, H = q.shape[2], q.shape[1]
    keys = repeat_kv(k, H)
    pos = torch.arange(N, device=q.device)
    row, col = pos // row_len, pos % row_len
    same_row = row[:, None] == row[None, :]
    direct = same_row & (pos[None, :] <= pos[:, None])
    reach = (col[None, :] == col[:, None]) & (row[None, :] < row[:, None])  # i -> (k, c_i), k < r_i
    scores = scale * q @ keys.transpose(-1, -2)
    row_attention = torch.softmax(scores.masked_fill(~same_row, float("-inf")), dim=-1)  # q(j | Omega) per token
    k_bar = row_attention @ keys
    direct_scores = scores.masked_fill(~direct, float("-inf"))
    column_scores = (scale * q @ k_bar.transpose(-1, -2)).masked_fill(~reach, float("-inf"))
    log_z = torch.logsumexp(torch.cat([direct_scores, column_scores], dim=-1), dim=-1, keepdim=True)
    return (direct_scores - log_z).exp() + (column_scores - log_z).exp() @ row_attention


def _reference(q, k, v, *, causal, mask, scale, row_len):
    return axial_weights(q, k, v, causal=causal, mask=mask, scale=scale, row_len=row_len) @ repeat_kv(v, q.shape[1])


class AxialState:
    """What a Combiner-Axial call leaves for the next one (a value: calls never change it).

    ``k_bar`` (B, H, R, row_len, D), ``v_bar`` (B, H, R, row_len, Dv): the summaries of the ``R``
    complete rows seen from each column; ``q_tail`` (B, H, m, D), ``k_tail``, ``v_tail`` (B, Hkv, m, .):
    the current partial row.
    """

    def __init__(self, length, k_bar, v_bar, q_tail, k_tail, v_tail):
        self.length = length
        self.k_bar, self.v_bar, self.q_tail, self.k_tail, self.v_tail = k_bar, v_bar, q_tail, k_tail, v_tail

    @classmethod
    def empty(cls, q, k, v, row_len):
        B, H, _, D = q.shape
        Dv = v.shape[-1]
        return cls(0, q.new_zeros(B, H, 0, row_len, D), v.new_zeros(B, H, 0, row_len, Dv), q[:, :, :0], k[:, :, :0],
                   v[:, :, :0])

    def check(self, q, k, v, row_len):
        B, H, _, D = q.shape
        if (tuple(self.k_bar.shape[:2]) != (B, H) or self.k_bar.shape[3:] != (row_len, D)
                or tuple(self.k_tail.shape[:2]) != tuple(k.shape[:2]) or self.v_bar.shape[-1] != v.shape[-1]
                or self.length % row_len != self.k_tail.shape[2]):
            raise ValueError("state is not a combiner_axial state of this batch, head count, head_dim and row_len")

    def numel(self) -> int:
        return sum(t.numel() for t in (self.k_bar, self.v_bar, self.q_tail, self.k_tail, self.v_tail))


def _rows(q, k, v, state, *, scale, row_len):
    """Row by row, continuing ``state``; returns the output and the state after the call."""
    s, (B, H, Nq, _) = row_len, q.shape
    m = state.k_tail.shape[2]  # tokens of the partial row already consumed
    T = m + Nq
    R = -(-T // s)
    Q = row_grid(torch.cat([state.q_tail, q], dim=2), s)
    K = row_grid(repeat_kv(torch.cat([state.k_tail, k], dim=2), H), s)
    V = row_grid(repeat_kv(torch.cat([state.v_tail, v], dim=2), H), s)
    has_key = (torch.arange(R * s, device=q.device) < T).reshape(R, s)[:, None, :]  # (R, 1, s)
    scores = scale * Q @ K.transpose(-1, -2)  # (B, H, R, s, s)
    row_attention = torch.softmax(scores.masked_fill(~has_key, float("-inf")), dim=-1)
    k_bar, v_bar = row_attention @ K, row_attention @ V  # (B, H, R, s, .): row r seen from each column
    causal = torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
    direct = scores.masked_fill(~(has_key & causal), float("-inf"))
    C = state.k_bar.shape[2]
    all_k_bar, all_v_bar = torch.cat([state.k_bar, k_bar], dim=2), torch.cat([state.v_bar, v_bar], dim=2)
    column = scale * torch.einsum("bhrcd,bhkcd->bhrck", Q, all_k_bar)  # (B, H, R, s, C + R)
    reach = torch.arange(C + R, device=q.device)[None, :] < (C + torch.arange(R, device=q.device))[:, None]
    column = column.masked_fill(~reach[:, None, :], float("-inf"))
    p = torch.softmax(torch.cat([direct, column], dim=-1), dim=-1)
    out = p[..., :s] @ V + torch.einsum("bhrck,bhkcd->bhrcd", p[..., s:], all_v_bar)
    out = out.reshape(B, H, R * s, -1)[:, :, m:T]
    full = T // s
    new_state = AxialState(state.length + Nq, torch.cat([state.k_bar, k_bar[:, :, :full]], dim=2),
                           torch.cat([state.v_bar, v_bar[:, :, :full]], dim=2),
                           torch.cat([state.q_tail, q], dim=2)[:, :, full * s:],
                           torch.cat([state.k_tail, k], dim=2)[:, :, full * s:],
                           torch.cat([state.v_tail, v], dim=2)[:, :, full * s:])
    return out, new_state


def _rows_form(q, k, v, *, causal, mask, scale, row_len):
    check_int("row_len", row_len)
    return _rows(q, k, v, AxialState.empty(q, k, v, row_len), scale=scale, row_len=row_len)[0]


def _step(q, k, v, state, *, causal, mask, scale, row_len):
    check_int("row_len", row_len)
    state = continued(state, AxialState, "combiner_axial", lambda: AxialState.empty(q, k, v, row_len), q, k, v,
                      row_len)
    return _rows(q, k, v, state, scale=scale, row_len=row_len)


_step.one_query_per_key = True  # a row's summaries need every token's query


def _flops(B, H, Nq, Nk, D, causal, row_len=64, **_):
    return 4 * B * H * Nq * (2 * row_len + -(-Nk // row_len)) * D


def _state_size(B, H, Hkv, N, D, v_dim=None, row_len=64, **_):
    Dv = v_dim or D
    full, tail = divmod(N, row_len)
    return B * H * full * row_len * (D + Dv) + B * tail * (H * D + Hkv * (D + Dv))


register(MechanismSpec(
    name="combiner_axial",
    family="factorised",
    papers=(PAPER,),
    patterns=frozenset({"causal-self"}),
    reference=_reference,
    fast={"rows": _rows_form},
    step=_step,
    params={"row_len": Param(64, int, "tokens per row of the row-major layout: the direct region's length "
                                      "(sqrt(N) gives O(N sqrt N))", low=1)},
    test_params={"row_len": 8},
    supports_mask=False,
    flops=_flops,
    state_size=_state_size,
    complexity="O(N (r + N / r))",
    weights=axial_weights,
    summary="Combiner-Axial: direct attention along the own row, every earlier row through the row "
            "attention of its token in the query's column (axial: row then column), one softmax. Reading: "
            "the authors' axial_rowmajor; the abstraction key is the row attention's weighted sum of keys",
))
