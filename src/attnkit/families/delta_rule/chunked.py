"""Chunked (WY / UT transform) form of the gated delta rule of ``delta_rule.py``.

From "Parallelizing Linear Transformers with the Delta Rule over Sequence
Length" (Yang et al., 2024), with the decays of Gated DeltaNet and KDA. Inside
a chunk of ``C`` tokens starting from state ``S0``, with ``b_r`` the cumulative
log decay up to token ``r`` of the chunk, the corrections ``u_r`` of the
recurrence (``S_r = Diag(alpha_r) S_{r-1} + k_r u_r^T``) satisfy the unit lower
triangular system ::

    u_r + beta_r sum_{i<r} A_ri u_i = beta_r (v_r - S0^T (e^{b_r} k_r)),
    A_ri = sum_d k_rd k_id e^{b_rd - b_id}

so ``U = U' - W S0`` with ``[W | U'] = (I + Diag(beta) A)^{-1} [beta e^{b} K | beta V]``
(the UT transform: one triangular solve per chunk, all chunks of a block at once). Only
two matmul-adds per chunk run in sequence: ``U = U' - W S0`` and the state passed on,
``S_next = e^{b_C} S0 + (e^{b_C - b} K)^T U``; the outputs ``O = (e^{b} Q) S0 + (P o causal) U``
with ``P_ri = sum_d q_rd k_id e^{b_rd - b_id}`` are then computed for all chunks of the block at once.

Channel-wise gates (KDA) factor ``e^{b_r - b_i} = e^{b_r} e^{-b_i}``; this is
exact while a chunk's total decay stays above ``e^-80`` in float32 (the KDA
layer in ``attnkit.nn`` bounds its gate for that). Scalar gates use the
``C x C`` decay matrix and have no such limit.
"""
from __future__ import annotations

import torch

from .forms import prepare, zero_state
from ...kernels.nonfinite import hold_back_nonfinite, poison
from ...kernels.pieces import pieces
from ...kernels.positions import repeat_kv

# Elements of the largest temporary of a block (heads x block tokens x max(C, 2 D)): the sequence runs in
# blocks of whole chunks, all heads at once, so each block's matrices stay in cache. Batched (64 x 64)
# matmuls run at ~140 GFLOP/s on cache-resident operands here and ~85 on 16 MB ones.
BLOCK_ELEMENTS = 1 << 20


def delta_rule_chunked(q, k, v, beta, g=None, *, scale, initial_state=None, qk_l2norm=True, chunk_size=64):
    """``(out, final_state)`` equal to :func:`delta_rule_parallel`, in O(N C D + N D^2) work."""
    B, H, N, Dk = q.shape
    k, v = repeat_kv(k, H), repeat_kv(v, H)
    if g is not None and g.ndim == 3:
        g = g.unsqueeze(-1)
    (k, v, beta, g), poisoned = hold_back_nonfinite(k, v, beta, g)  # a NaN stays in its token's future
    S = zero_state(k, v) if initial_state is None else initial_state
    Dv, C = v.shape[-1], chunk_size
    block = C * max(1, BLOCK_ELEMENTS // (B * H * C * max(C, Dk + Dv)))  # tokens per block
    flat = lambda t: None if t is None else t.reshape(B * H, *t.shape[2:])  # noqa: E731
    S, outs = flat(S), []
    for q_p, k_p, v_p, beta_p, g_p in zip(*(pieces(t, block, 2, N) for t in (q, k, v, beta, g))):
        # prepare per block, not on whole tensors: its element-wise passes then run on cached data.
        q_p, k_p, v_p, g_p = prepare(q_p, k_p, v_p, g_p, scale=scale, qk_l2norm=qk_l2norm)
        o, S = _block(*(flat(t) for t in (q_p, k_p, v_p, beta_p, g_p)), S, C)
        outs.append(o)
    return poison(torch.cat(outs, dim=1).reshape(B, H, N, Dv), S.reshape(B, H, Dk, Dv), poisoned)


def _block(q, k, v, beta, g, S, C):
    """The WY / UT chunked form on one block of prepared ``(heads, tokens, D)`` inputs from state ``S``."""
    BH, L, Dk = q.shape
    pad = -L % C
    n = (L + pad) // C
    q, k, v = (_pad_seq(t, pad).view(BH, n, C, t.shape[-1]) for t in (q, k, v))
    beta = _pad_seq(beta.unsqueeze(-1), pad).view(BH, n, C, 1)
    b = None if g is None else _pad_seq(g, pad).view(BH, n, C, g.shape[-1]).cumsum(dim=2)
    A, P, q_dec, k_dec, k_end, chunk_decay = decayed_products(q, k, b)
    W, U_prime = solve_unit_lower(A * beta, beta * k_dec, beta * v)

    # In sequence, per chunk: its corrections U = U' - W S, then S_next = Diag(e^{b_C}) S + K_end^T U.
    k_end_t = k_end.transpose(-1, -2)
    states, corrections = [], []
    for c in range(n):
        states.append(S)
        U = torch.baddbmm(U_prime[:, c], W[:, c], S, alpha=-1)  # one op: no separate product and subtract
        corrections.append(U)
        S = torch.baddbmm(S if chunk_decay is None else S * chunk_decay[:, c], k_end_t[:, c], U)
    Dv = S.shape[-1]
    out = (q_dec @ torch.stack(states, dim=1)).view(-1, C, Dv)
    out = torch.baddbmm(out, P.tril_().view(-1, C, C), torch.stack(corrections, dim=1).view(-1, C, Dv))
    return out.view(BH, n * C, Dv)[:, :L], S


def solve_block(C: int, block: int = 16) -> int:
    """Rows per diagonal block of :func:`solve_unit_lower` for a ``C x C`` system: ``block``, or all of
    ``C`` when ``block`` does not divide it."""
    return block if C % block == 0 else C


def solve_unit_lower(L: torch.Tensor, *rhs: torch.Tensor, block: int = 16) -> tuple[torch.Tensor, ...]:
    """Solve ``(I + L) X = R`` for each ``R`` of ``rhs``, for ``L (..., C, C)`` using only its strictly lower triangle.

    Block forward substitution over ``block`` rows, matmuls only; each diagonal block's
    inverse is its finite Neumann series ``sum_j (-L_ii)^j = (I - L_ii)(I + L_ii^2)(I + L_ii^4)...``
    (``L_ii`` is nilpotent). Batched matmuls run far faster on CPU than
    ``torch.linalg.solve_triangular`` on many small systems. Several right-hand sides are solved
    side by side rather than concatenated: the concatenation cost more than the extra small matmuls
    (measured with the matmul-adds below: the kernel's forward 1.05-1.11x at N = 8192).
    """
    C = L.shape[-1]
    b = solve_block(C, block)
    diag = torch.stack([L[..., i : i + b, i : i + b] for i in range(0, C, b)], dim=-3).tril(-1)
    neg = -diag
    inverse, power, covered = neg + torch.eye(b, dtype=L.dtype, device=L.device), neg, 2
    while covered < b:
        power = power @ power
        inverse = inverse + inverse @ power
        covered *= 2
    mats = lambda t: t.reshape(-1, *t.shape[-2:])  # noqa: E731  (..., r, c) -> (batch, r, c) for baddbmm
    L, inverse = mats(L), inverse.reshape(-1, *inverse.shape[-3:])
    return tuple(_substitute(L, inverse, mats(R), b).reshape(R.shape) for R in rhs)


def _substitute(L, inverse, R, b):
    """Block forward substitution of ``(I + L) X = R`` (3-d, batched) given the diagonal blocks' ``inverse``."""
    xs = []
    for j, i in enumerate(range(0, L.shape[-1], b)):
        r = R[:, i : i + b]
        for m, x in enumerate(xs):
            r = torch.baddbmm(r, L[:, i : i + b, m * b : (m + 1) * b], x, alpha=-1)  # one op: no separate sub
        xs.append(inverse[:, j] @ r)
    return torch.cat(xs, dim=-2)


def _pad_seq(t: torch.Tensor, pad: int) -> torch.Tensor:
    """Zeros after the last token (dim 1): a zero key, beta and log-gate leave the state unchanged."""
    if pad == 0:
        return t
    return torch.cat([t, t.new_zeros(t.shape[0], pad, *t.shape[2:])], dim=1)


def decayed_products(q, k, b):
    """``A = K K^T``, ``P = Q K^T`` with relative decays, and the decayed q, k used across chunks.

    Returns ``(A, P, e^{b} Q, e^{b} K, e^{b_C - b} K, e^{b_C})``; the last is None without a gate.
    """
    if b is None:
        return k @ k.transpose(-1, -2), q @ k.transpose(-1, -2), q, k, k, None
    decay_in = b.exp()
    k_dec, q_dec = k * decay_in, q * decay_in
    chunk_decay = decay_in[..., -1:, :].transpose(-1, -2)  # e^{b_C}, (B, H, n, Dk or 1, 1): scales the rows of S
    if b.shape[-1] == 1:  # scalar gate: exact C x C decay matrix e^{b_r - b_i}, i <= r
        k_end = k * (b[..., -1:, :] - b).exp()
        diff = b - b.transpose(-1, -2)
        causal = torch.ones(diff.shape[-2:], dtype=torch.bool, device=b.device).tril()
        decay = diff.masked_fill(~causal, float("-inf")).exp()
        A = (k @ k.transpose(-1, -2)) * decay
        P = (q @ k.transpose(-1, -2)) * decay
        return A, P, q_dec, k_dec, k_end, chunk_decay
    # Channel gate: e^{-b} K as K / e^{b} and e^{b_C - b} K from it, so one exp over (n, C, Dk) instead of
    # four (measured: kda forward 1.08x, forward+backward 1.05x).
    k_inv = k / decay_in
    k_end = k_inv * chunk_decay.transpose(-1, -2)
    A = k_dec @ k_inv.transpose(-1, -2)
    P = q_dec @ k_inv.transpose(-1, -2)
    return A, P, q_dec, k_dec, k_end, chunk_decay
