"""Chunked form of RWKV-7's generalised delta rule (a diagonal-plus-rank-one transition).

With the state ``S (Dk, Dv)`` and ``S_t = (diag(w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T``,
write ``s_t = a_t^T S_{t-1}`` (what token ``t`` reads from the state before it, ``(Dv,)``):
then ``S_t = diag(w_t) S_{t-1} + b_t s_t + k_t v_t^T`` is a gated linear recurrence with two
writes per token, ``b_t s_t`` and ``k_t v_t^T``. Inside a chunk of ``C`` tokens starting from
``S0``, with ``g_r`` the running sum of ``log w`` up to token ``r`` of the chunk (inclusive),
``a~_r = a_r e^{g_{r-1}}``, ``b~_i = b_i e^{-g_i}``, ``k~_i = k_i e^{-g_i}``::

    s_r = a~_r S0 + sum_{i<r} (a~_r . b~_i) s_i + (a~_r . k~_i) v_i

a unit lower triangular system, so ``s = W S0 + U'`` with
``[W | U'] = (I - tril_1(a~ b~^T))^{-1} [a~ | tril_1(a~ k~^T) V]`` (the UT transform of the
delta rule, one solve per chunk, all chunks at once). In sequence, per chunk, only
``s = U' + W S0`` and ``S_next = e^{g_C} S0 + (b~ e^{g_C})^T s + (k~ e^{g_C})^T V``; the outputs
``o = r~ S0 + tril(r~ b~^T) s + tril(r~ k~^T) V`` with ``r~_r = r_r e^{g_r}`` then run for all
chunks at once.

The factorisation ``e^{g_r - g_i} = e^{g_r} e^{-g_i}`` is exact while a chunk's total decay stays
above ``e^-80`` in float32; RWKV-7's decay ``w >= exp(-e^-0.5)`` keeps a 64-token chunk above ``e^-39``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..delta_rule.chunked import solve_unit_lower
from ...kernels.nonfinite import hold_back_nonfinite, poison


def rwkv7_chunked(r, k, v, log_w, a, b, S0, *, chunk_size):
    """``(out, S_N)`` equal to the recurrence, for ``(B, H, N, D)`` inputs (k, v already per query head)."""
    B, H, N, Dk = r.shape
    Dv, C = v.shape[-1], chunk_size
    (k, v, log_w, a, b), poisoned = hold_back_nonfinite(k, v, log_w, a, b)  # a NaN stays in its token's future
    pad = -N % C
    n = (N + pad) // C
    # zero tokens after the end: transition I, nothing written, so the state is unchanged
    chunks = lambda t: F.pad(t, (0, 0, 0, pad)).reshape(B * H, n, C, t.shape[-1])  # noqa: E731
    r, k, v, log_w, a, b = (chunks(t) for t in (r, k, v, log_w, a, b))
    g = log_w.cumsum(dim=2)
    a_dec = a * (g - log_w).exp()
    inv = (-g).exp()
    b_dec, k_dec, r_dec = b * inv, k * inv, r * g.exp()
    end = g[:, :, -1:].exp()  # e^{g_C}, (BH, n, 1, Dk)
    reads_b, reads_k = a_dec @ b_dec.transpose(-1, -2), a_dec @ k_dec.transpose(-1, -2)
    W, U = solve_unit_lower(-reads_b, a_dec, reads_k.tril(-1) @ v)
    written_k = (k_dec * end).transpose(-1, -2) @ v  # (BH, n, Dk, Dv)
    b_end_t = (b_dec * end).transpose(-1, -2)
    decay_rows = end.transpose(-1, -2)  # scales the rows of S

    S = S0.reshape(B * H, Dk, Dv)
    starts, reads = [], []
    for c in range(n):
        starts.append(S)
        s = torch.baddbmm(U[:, c], W[:, c], S)
        reads.append(s)
        S = torch.baddbmm(torch.addcmul(written_k[:, c], decay_rows[:, c], S), b_end_t[:, c], s)
    starts, reads = torch.stack(starts, dim=1), torch.stack(reads, dim=1)
    out = r_dec @ starts + (r_dec @ b_dec.transpose(-1, -2)).tril() @ reads + (r_dec @ k_dec.transpose(-1, -2)).tril() @ v
    out = out.reshape(B, H, n * C, Dv)[:, :, :N]
    return poison(out, S.reshape(B, H, Dk, Dv), poisoned)
