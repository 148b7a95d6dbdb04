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
(the UT transform: one triangular solve per chunk, all chunks at once). The state
passes chunk to chunk as ``S_next = e^{b_C} S0 + (e^{b_C - b} K)^T U``, an affine map
of ``S0`` whose two factors are computed for all chunks at once, so only one
matmul-add per chunk runs in sequence; the outputs ``O = (e^{b} Q) S0 + (P o causal) U``
with ``P_ri = sum_d q_rd k_id e^{b_rd - b_id}`` are then computed for all chunks at once.

Channel-wise gates (KDA) factor ``e^{b_r - b_i} = e^{b_r} e^{-b_i}``; this is
exact while a chunk's total decay stays above ``e^-80`` in float32 (the KDA
layer in ``attnkit.nn`` bounds its gate for that). Scalar gates use the
``C x C`` decay matrix and have no such limit.
"""
from __future__ import annotations

import torch

from .delta_rule import prepare, zero_state
from .pieces import pieces
from .positions import repeat_kv

# Elements of the largest per-step temporary (chunks x C x max(C, 2 D)): heads are processed in
# slices of about this size, which stay in cache; all heads at once at N = 8192 are ~1.6x slower.
STEP_ELEMENTS = 1 << 20


def delta_rule_chunked(q, k, v, beta, g=None, *, scale, initial_state=None, qk_l2norm=True, chunk_size=64):
    """``(out, final_state)`` equal to :func:`delta_rule_parallel`, in O(N C D + N D^2) work."""
    B, H, N, Dk = q.shape
    k, v = repeat_kv(k, H), repeat_kv(v, H)
    if g is not None and g.ndim == 3:
        g = g.unsqueeze(-1)
    S = zero_state(k, v) if initial_state is None else initial_state
    Dv = v.shape[-1]
    flat = lambda t: None if t is None else t.reshape(1, B * H, *t.shape[2:])  # noqa: E731
    q, k, v, beta, g, S = (flat(t) for t in (q, k, v, beta, g, S))
    per_step = -(-N // chunk_size) * chunk_size * max(chunk_size, Dk + Dv)
    step = max(1, STEP_ELEMENTS // per_step)
    outs, states = [], []
    for q_p, k_p, v_p, beta_p, g_p, S_p in zip(*(pieces(t, step, 1, B * H) for t in (q, k, v, beta, g, S))):
        # prepare per slice, not on whole tensors: its element-wise passes then run on cached data.
        q_p, k_p, v_p, g_p = prepare(q_p, k_p, v_p, g_p, scale=scale, qk_l2norm=qk_l2norm)
        o, s = _chunked_heads(q_p, k_p, v_p, beta_p, g_p, S_p, chunk_size)
        outs.append(o)
        states.append(s)
    out = torch.cat(outs, dim=1).reshape(B, H, N, Dv)
    return out, torch.cat(states, dim=1).reshape(B, H, Dk, Dv)


def _chunked_heads(q, k, v, beta, g, S, C):
    """The WY / UT chunked form for prepared ``(B, H, N, D)`` inputs and state ``S``."""
    B, H, N, Dk = q.shape
    pad = -N % C
    n = (N + pad) // C
    q, k, v = (_pad_seq(t, pad).reshape(B, H, n, C, t.shape[-1]) for t in (q, k, v))
    beta = _pad_seq(beta, pad).reshape(B, H, n, C, 1)

    A, P, q_dec, k_dec, k_end, chunk_decay = _decayed_products(q, k, _chunk_log_decay(g, pad, n, C))
    W, U_prime = solve_unit_lower(A * beta, beta * k_dec, beta * v)

    # Across chunks S_next = (Diag(e^{b_C}) - K_end^T W) S + K_end^T U': both factors for all chunks at
    # once, so the sequential part is one batched matmul-add per chunk.
    mats = lambda t: t.reshape(-1, *t.shape[-2:])  # noqa: E731  (B, H, n, r, c) -> (B H n, r, c) for baddbmm
    k_end_t = mats(k_end).transpose(-1, -2)
    if chunk_decay is None:
        diagonal = torch.eye(Dk, dtype=q.dtype, device=q.device).expand(B * H * n, Dk, Dk)
    else:
        diagonal = torch.diag_embed(chunk_decay.squeeze(-1).expand(B, H, n, Dk)).reshape(-1, Dk, Dk)
    transition = torch.baddbmm(diagonal, k_end_t, mats(W), alpha=-1)  # one op: no separate negate and add
    written = k_end_t @ mats(U_prime)
    flat = lambda t: t.reshape(B * H, n, *t.shape[-2:]).unbind(1)  # noqa: E731
    states, S = [], S.reshape(B * H, Dk, -1)
    for T_c, X_c in zip(flat(transition), flat(written)):
        states.append(S)
        S = torch.baddbmm(X_c, T_c, S)
    S_before = torch.stack(states, dim=1).reshape(-1, Dk, S.shape[-1])
    U = torch.baddbmm(mats(U_prime), mats(W), S_before, alpha=-1)
    out = torch.baddbmm(mats(q_dec) @ S_before, mats(P).tril_(), U)  # P is a fresh product: tril in place
    S = S.reshape(B, H, Dk, -1)
    return out.reshape(B, H, n * C, -1)[:, :, :N], S


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
    b = block if C % block == 0 else C
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
    """Zeros after the last token (dim 2): a zero key, beta and log-gate leave the state unchanged."""
    if pad == 0:
        return t
    return torch.cat([t, t.new_zeros(*t.shape[:2], pad, *t.shape[3:])], dim=2)


def _chunk_log_decay(g, pad, n, C):
    """Cumulative log decay inside each chunk, ``(B, H, n, C, 1 or Dk)``; padding decays nothing."""
    if g is None:
        return None
    g = _pad_seq(g, pad)
    return g.reshape(g.shape[0], g.shape[1], n, C, g.shape[-1]).cumsum(dim=3)


def _decayed_products(q, k, b):
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
