"""RWKV-4's WKV in three forms: materialised (the reference), per chunk, token by token.

All three keep the numerator and denominator sums in log space with a running
maximum ``p`` per channel, as the authors' CUDA kernel does, so ``exp(k)`` never
overflows. State: ``a`` and ``b`` ``(B, H, D)`` with ``S_t = a e^p``, ``Z_t = b e^p``
(the sums over every token seen, decayed to the last one), and ``p``.
"""
from __future__ import annotations

import torch


def _combine(terms, values):
    """``sum_i e^{terms_i} values_i / sum_i e^{terms_i}`` along dim -2 (per channel), stably."""
    m = terms.amax(dim=-2, keepdim=True)  # the state keeps it as p (a running max in the recurrent form)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(terms - m)
    return (e * values).sum(-2), e.sum(-2), m.squeeze(-2)


def wkv_parallel(r, k, v, w, u, a, b, p):
    """Every pair materialised: ``(B, H, N, N, D)`` logits ``-(t - 1 - i) w + k_i`` (``i < t``), ``u + k_t`` (``i = t``)."""
    N = k.shape[2]
    t = torch.arange(N, device=k.device)
    gap = (t[:, None] - 1 - t[None, :]).to(k.dtype)  # (N, N)
    logits = -gap[..., None] * w[:, None, None, :] + k[:, :, None, :, :]  # (B, H, t, i, D)
    logits = torch.where((t[:, None] > t[None, :])[..., None], logits, torch.full_like(logits, float("-inf")))
    logits = torch.where((t[:, None] == t[None, :])[..., None], (u[:, None, :] + k)[:, :, :, None, :], logits)
    past = (p[:, :, None, :] - t[None, None, :, None].to(k.dtype) * w[:, None, :])  # the state, decayed j steps
    terms = torch.cat([logits, past[:, :, :, None, :]], dim=3)
    values = torch.cat([v[:, :, None, :, :].expand(-1, -1, N, -1, -1), a[:, :, None, None, :].expand(-1, -1, N, 1, -1)], 3)
    norms = torch.cat([torch.ones_like(v)[:, :, None, :, :].expand(-1, -1, N, -1, -1),
                       b[:, :, None, None, :].expand(-1, -1, N, 1, -1)], 3)
    num, _, _ = _combine(terms, values)
    den, _, _ = _combine(terms, norms)
    out = torch.sigmoid(r) * num / den
    return out, _fold(k, v, w, a, b, p)


def _fold(k, v, w, a, b, p):
    """The state after the tokens of ``k``, ``v``: ``S = e^{-n w} S_prev + sum_i e^{-(n - 1 - i) w + k_i} v_i``."""
    n = k.shape[2]
    age = torch.arange(n - 1, -1, -1, device=k.device, dtype=k.dtype)  # n - 1 - i
    terms = torch.cat([-age[:, None] * w[:, None, :] + k, (p - n * w)[:, :, None, :]], dim=2)
    a_new, _, m = _combine(terms, torch.cat([v, a[:, :, None, :]], dim=2))
    b_new, _, _ = _combine(terms, torch.cat([torch.ones_like(v), b[:, :, None, :]], dim=2))
    return a_new, b_new, m


def wkv_chunked(r, k, v, w, u, a, b, p, *, chunk_size):
    """The materialised form on each chunk of ``chunk_size`` tokens, the state carried between chunks."""
    outs = []
    for s in range(0, k.shape[2], chunk_size):
        e = s + chunk_size
        out, (a, b, p) = wkv_parallel(r[:, :, s:e], k[:, :, s:e], v[:, :, s:e], w, u, a, b, p)
        outs.append(out)
    return torch.cat(outs, dim=2), (a, b, p)


def wkv_recurrent(r, k, v, w, u, a, b, p):
    """Token by token (the RNN mode of the paper): read with the bonus ``u``, then decay and add."""
    outs = []
    for t in range(k.shape[2]):
        kt, vt = k[:, :, t], v[:, :, t]
        now = u + kt
        m = torch.maximum(p, now)
        e_past, e_now = torch.exp(p - m), torch.exp(now - m)
        outs.append(torch.sigmoid(r[:, :, t]) * (e_past * a + e_now * vt) / (e_past * b + e_now))
        decayed = p - w
        m = torch.maximum(decayed, kt)
        e_past, e_now = torch.exp(decayed - m), torch.exp(kt - m)
        a, b, p = e_past * a + e_now * vt, e_past * b + e_now, m
    return torch.stack(outs, dim=2), (a, b, p)
