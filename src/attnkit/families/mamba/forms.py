"""Mamba-1's selective scan in three forms: materialised (the reference), per chunk, token by token.

Shapes: ``C = q (B, H, N, Dk)``, ``B = k``, ``x = v (B, H, N, Dv)``, ``dt (B, H, N, Dv)``,
``A (H, Dv, Dk)``, ``D (H, Dv)``; the state ``h (B, H, Dv, Dk)``.
"""
from __future__ import annotations

import torch

# The materialised form holds (B, H, N, N, channels, Dk) decays; it walks the value channels in
# blocks so that this stays under about this many numbers.
PAIRS_BUDGET = 1 << 22


def scan_parallel(C, Bk, x, dt, A, D, h0):
    """``y_t = sum_{s<=t} C_t . (exp(A (c_t - c_s)) * dt_s x_s B_s) + C_t . (exp(A c_t) h0) + D x_t``,
    ``c`` the running sum of ``dt`` (per channel); returns ``(y, h_N)``."""
    N, Dv, Dk = x.shape[2], x.shape[3], Bk.shape[3]
    c = dt.cumsum(dim=2)  # (B, H, N, Dv)
    causal = torch.ones(N, N, dtype=torch.bool, device=x.device).tril()
    block = max(1, PAIRS_BUDGET // max(1, x.shape[0] * x.shape[1] * N * N * Dk))
    ys, hs = [], []
    for d0 in range(0, Dv, block):
        d = slice(d0, d0 + block)
        a = A[None, :, None, None, d, :]  # (1, H, 1, 1, db, Dk)
        gap = (c[:, :, :, None, d] - c[:, :, None, :, d])[..., None]  # (B, H, t, s, db, 1)
        exponent = torch.where(causal[:, :, None, None], a * gap, torch.full_like(a * gap, float("-inf")))
        drive = (dt[..., d] * x[..., d])[..., None] * Bk[:, :, :, None, :]  # (B, H, s, db, Dk)
        inner = torch.einsum("bhtsen,bhsen->bhten", torch.exp(exponent), drive)  # h_t from the tokens
        h_all = inner + torch.exp(A[None, :, None, d, :] * c[..., d, None]) * h0[:, :, None, d, :]
        ys.append(torch.einsum("bhten,bhtn->bhte", h_all, C))
        hs.append(h_all[:, :, -1])
    return torch.cat(ys, dim=-1) + D[None, :, None, :] * x, torch.cat(hs, dim=2)


def scan_chunked(C, Bk, x, dt, A, D, h0, *, chunk_size):
    """The materialised form on each chunk of ``chunk_size`` tokens, ``h`` carried between chunks."""
    ys, h = [], h0
    for s in range(0, x.shape[2], chunk_size):
        e = s + chunk_size
        y, h = scan_parallel(C[:, :, s:e], Bk[:, :, s:e], x[:, :, s:e], dt[:, :, s:e], A, D, h)
        ys.append(y)
    return torch.cat(ys, dim=2), h


def scan_recurrent(C, Bk, x, dt, A, D, h0):
    """``h_t = exp(dt_t A) * h_{t-1} + (dt_t x_t) B_t^T``, ``y_t = h_t C_t + D x_t``, one token at a time.

    The decays and drives of every token are computed at once and the readout is one contraction
    over the stacked states, so the loop runs only the recurrence: the same arithmetic per token,
    in far fewer (larger) operations, which is what a token loop on the CPU is bound by. It holds
    the decays, drives and states of all tokens, ``3 (B, H, N, Dv, Dk)`` numbers."""
    decay = torch.exp(dt[..., None] * A[None, :, None])  # (B, H, N, Dv, Dk)
    drive = (dt * x)[..., None] * Bk[:, :, :, None, :]  # (B, H, N, Dv, Dk)
    states, h = [], h0
    for decay_t, drive_t in zip(decay.unbind(2), drive.unbind(2)):  # unbind: one gradient stack, not N
        h = decay_t * h + drive_t
        states.append(h)
    y = torch.einsum("bhtek,bhtk->bhte", torch.stack(states, dim=2), C)
    return y + D[None, :, None, :] * x, h
