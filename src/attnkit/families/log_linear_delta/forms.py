"""Log-linear attention over the gated delta rule (log-linear Gated DeltaNet): three forms.

Guo, Yang, Goel, Xing, Dao & Kim, "Log-Linear Attention" (2025), applied to the
recurrence of "Gated Delta Networks: Improving Mamba2 with Delta Rule"::

    S_t = A_t S_{t-1} + beta_t k_t v_t^T,   A_t = alpha_t (I - beta_t k_t k_t^T),   alpha_t = exp(g_t)

The transition does not depend on the state, so the state splits exactly into the
Fenwick buckets of ``attnkit.families.log_linear.forms`` (key ``s`` at level
``l(t, s) = bit_length(t XOR s)`` of query ``t``), each bucket evolving under the
same ``A_t``; each level has its own weight ``lam[t, l]``::

    o_t = sum_{s <= t} lam[t, l(t, s)] M_ts v_s,   M_ts = beta_s q_t^T (A_t ... A_{s+1}) k_s

Inputs come prepared (``delta_rule.prepare``: q, k L2-normalised, the scale in q,
k and v per query head); ``beta`` and ``g`` are ``(B, H, N)``, ``lam``
``(B, H, N, levels)``. Positions are absolute (``start``); ``S0`` is the per-level
state at ``start - 1``. All forms return ``(out, S)`` with ``S (B, H, levels, Dk, Dv)``
the per-level states at the last token: ``log_linear_delta_parallel`` (pair weights
from materialised transitions, the reference), ``log_linear_delta_recurrent``
(Fenwick merges and a rank-1 transition per token) and ``log_linear_delta_chunked``
(the WY / UT transform inside aligned chunks, per-level states between them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..delta_rule.chunked import decayed_products, solve_unit_lower
from ..log_linear.forms import carried_levels, fold, level_one_hot, pair_weights
from ...kernels.nonfinite import hold_back_nonfinite, poison


def log_linear_delta_parallel(q, k, v, beta, g, lam, *, start, S0):
    """Reference: ``O = (M * Lambda) V`` with ``M_ts = beta_s q_t^T A_t ... A_{s+1} k_s`` built from the
    materialised ``Dk x Dk`` transitions, ``Lambda_ts = lam[t, l(t, s)]``, plus the initial state read
    through ``A_t ... A_start`` at level ``max(l0, l(t, start - 1))`` for its bucket ``l0``."""
    B, H, N, Dk = k.shape
    Lv = lam.shape[-1]
    eye = torch.eye(Dk, dtype=k.dtype, device=k.device)
    keys = k.new_zeros(B, H, 0, Dk)  # rows beta_s A_t ... A_{s+1} k_s, s <= t
    through = eye.expand(B, H, Dk, Dk)  # A_t ... A_start
    rows, reads = [], []
    for t in range(N):
        k_t, b_t = k[:, :, t], beta[:, :, t, None, None]
        A_t = g[:, :, t, None, None].exp() * (eye - b_t * k_t[..., :, None] * k_t[..., None, :])
        keys = torch.cat([keys @ A_t.transpose(-1, -2), (b_t[..., 0] * k_t)[:, :, None]], dim=2)
        through = A_t @ through
        rows.append(F.pad(keys @ q[:, :, t, :, None], (0, 0, 0, N - 1 - t))[..., 0])  # M_ts, zero for s > t
        reads.append(through.transpose(-1, -2) @ q[:, :, t, :, None])
    pos = torch.arange(start, start + N, device=q.device)
    out = (torch.stack(rows, dim=2) * pair_weights(lam, pos)) @ v
    S = torch.einsum("sl,bhsd,bhse->bhlde", level_one_hot(pos, pos[-1], Lv).to(q.dtype), keys, v)
    if S0 is None:
        return out, S
    weights = torch.gather(lam, -1, carried_levels(pos, torch.tensor(start - 1), Lv).expand(B, H, N, Lv))
    out = out + torch.einsum("bhtl,bhtd,bhlde->bhte", weights, torch.stack(reads, dim=2)[..., 0], S0)
    return out, S + fold(through[:, :, None] @ S0, ((start + N - 1) ^ (start - 1)).bit_length())


def log_linear_delta_recurrent(q, k, v, beta, g, lam, *, start, S0):
    """Token by token: merge, ``S_l <- alpha (S_l - beta k (k^T S_l))`` on every level, put
    ``beta k v^T`` at level 0 (emptied by the merge), read ``o_t = sum_l lam_l S_l^T q_t``."""
    B, H, N, Dk = k.shape
    S = S0 if S0 is not None else k.new_zeros(B, H, lam.shape[-1], Dk, v.shape[-1])
    outs = []
    steps = zip(*(t.unbind(2) for t in (q, k, v, beta, g, lam)))
    for t, (q_t, k_t, v_t, b_t, g_t, lam_t) in enumerate(steps):
        p = start + t
        if p > 0:
            S = fold(S, (p ^ (p - 1)).bit_length())
        row = k_t[:, :, None, None, :]  # (B, H, 1, 1, Dk) against every level
        S = g_t.exp()[..., None, None, None] * (S - (b_t[..., None, None, None] * row.transpose(-1, -2)) @ (row @ S))
        written = (b_t[..., None] * k_t)[..., :, None] * v_t[..., None, :]
        S = torch.cat([written[:, :, None], S[:, :, 1:]], dim=2)
        outs.append(torch.einsum("bhl,bhd,bhlde->bhe", lam_t, q_t, S))
    return torch.stack(outs, dim=2), S


def log_linear_delta_chunked(q, k, v, beta, g, lam, *, start, S0, chunk_size):
    """Chunks aligned with ``chunk_size`` (a power of two), all computed at once, then one matmul-add
    per chunk and level in sequence. A chunk ``[p, p + C)`` reads position ``entry = max(p, start)``
    on. With ``P``, ``A`` the decayed ``Q K^T``, ``K K^T`` (lower triangular, ``A`` strictly in the
    solve) and ``T = (I + tril(Diag(beta) A, -1))^{-1} Diag(beta)`` (the UT transform):

    - ``M = P T`` are the chunk's pair weights ``beta_i q_r^T A_r ... A_{i+1} k_i``: out ``(M * Lambda) V``;
    - ``Q_eff = e^b Q - P T e^b K`` has rows ``q_r^T A_r ... A_entry``: it reads the states from before
      the chunk, bucket ``l0`` at level ``max(l0, l(r, entry - 1))``;
    - those states fold into ``l(end, entry - 1)`` (the Fenwick merge) and pass through
      ``A_end ... A_entry = Diag(e^{b_C}) - K_end^T T e^b K``;
    - the columns of ``K_end^T T`` are ``beta_i A_end ... A_{i+1} k_i``: token ``i`` enters the level
      ``l(end, i) <= log2 C`` of the end state with ``K_end^T T e_i v_i^T``.

    The tokens of the first chunk before ``start`` and of the last after the end are padding with zero
    key, beta and log decay (the identity transition, nothing written); the latter take the last
    position, so every level stays within ``lam``'s.
    """
    (k, v, beta, g), poisoned = hold_back_nonfinite(k, v, beta, g)  # a NaN stays in its token's future
    B, H, N, Dk = k.shape
    C, Lv, Dv = chunk_size, lam.shape[-1], v.shape[-1]
    front, first, last = start % C, start - start % C, start + N - 1
    n = -(-(front + N) // C)

    def chunks(t):
        t = F.pad(t, (0, 0) * (t.ndim - 3) + (front, n * C - front - N))
        return t.reshape(B, H, n, C, -1)

    q, k, v, beta, g, lam = (chunks(t) for t in (q, k, v, beta[..., None], g[..., None], lam))
    pos = torch.arange(first, first + n * C, device=q.device).clamp(max=last).reshape(n, C)
    entries = [max(first + c * C, start) for c in range(n)]
    ends = [min(first + (c + 1) * C, start + N) - 1 for c in range(n)]

    A, P, q_dec, k_dec, k_end, chunk_decay = decayed_products(q, k, g.cumsum(dim=3))
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    T = solve_unit_lower(A * beta, eye.expand(*A.shape))[0] * beta.transpose(-1, -2)
    W = T @ k_dec
    out = ((P @ T) * pair_weights(lam, pos)) @ v
    q_eff = q_dec - P @ W
    transitions = torch.diag_embed(chunk_decay.expand(B, H, n, Dk, 1)[..., 0]) - k_end.transpose(-1, -2) @ W
    inner = min(C.bit_length(), Lv)  # levels of a chunk's own tokens seen from its end: 0 .. log2 C
    at_end = level_one_hot(pos, torch.tensor(ends, device=q.device)[:, None], inner).to(q.dtype)
    keys_end = k_end.transpose(-1, -2) @ T  # columns beta_i A_end ... A_{i+1} k_i

    # At entry 0 the state before is empty: any level does for its (zero) read.
    before = (torch.tensor(entries, device=q.device) - 1).clamp(min=0)[:, None]
    weights = torch.gather(lam, -1, carried_levels(pos, before, Lv).expand(B, H, n, C, Lv))
    S = S0 if S0 is not None else q.new_zeros(B, H, Lv, Dk, Dv)
    reads = []  # each chunk reads the levels before it as it passes: no (chunks x levels) state is kept
    steps = zip(entries, ends, transitions.unbind(2), keys_end.unbind(2), at_end.transpose(-1, -2),
                weights.unbind(2), q_eff.unbind(2), v.unbind(2))
    for entry, end, T_c, keys_c, levels_c, w_c, q_c, v_c in steps:
        reads.append((w_c[..., None] * q_c[..., None, :]).flatten(-2) @ S.flatten(2, 3))
        if entry > 0:
            S = fold(S, (end ^ (entry - 1)).bit_length())
        S = T_c[:, :, None] @ S
        written = (keys_c[:, :, None] * levels_c[:, None, :]) @ v_c[:, :, None]  # each token into its level
        S = torch.cat([S[:, :, :inner] + written, S[:, :, inner:]], dim=2)
    out = out + torch.stack(reads, dim=2)
    return poison(out.reshape(B, H, n * C, Dv)[:, :, front : front + N], S, poisoned)
