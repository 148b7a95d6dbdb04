"""Hyena's order-2 operator in three forms: Toeplitz matrices (the reference), FFT, token by token.

``y = q * (h2 conv (k * (h1 conv v)))`` per channel, ``(h conv u)_t = sum_{s<=t} h[t - s] u_s``.
Inputs ``(B, H, N, D)``, filters ``(2, H, L, D)``; ``v_past``, ``u_past`` ``(B, H, P, D)`` are the
``P`` tokens before these (the state): the convolutions reach back over them.
"""
from __future__ import annotations

import torch


def _toeplitz_conv(h, u, past):
    """The causal convolution with every lag written out: ``(N, P + N, D)`` weights per head."""
    full = torch.cat([past, u], dim=2)
    P, N = past.shape[2], u.shape[2]
    lag = torch.arange(P, P + N, device=u.device)[:, None] - torch.arange(P + N, device=u.device)[None, :]
    weights = h[:, lag.clamp(min=0)] * (lag >= 0)[None, :, :, None]  # (H, N, P + N, D)
    return torch.einsum("htsd,bhsd->bhtd", weights, full)


def _fft_conv(h, u, past):
    """The same convolution by FFT: zero-padded to twice the length, so nothing wraps around."""
    full = torch.cat([past, u], dim=2)
    n = full.shape[2]
    size = 2 * n
    spectrum = torch.fft.rfft(full.transpose(2, 3), n=size) * torch.fft.rfft(h[:, :n].transpose(1, 2), n=size)
    out = torch.fft.irfft(spectrum, n=size)[..., :n].transpose(2, 3)
    return out[:, :, past.shape[2]:]


def _operator(conv, q, k, v, filters, v_past, u_past):
    u = k * conv(filters[0], v, v_past)
    return q * conv(filters[1], u, u_past), (torch.cat([v_past, v], 2), torch.cat([u_past, u], 2))


def hyena_parallel(q, k, v, filters, v_past, u_past):
    return _operator(_toeplitz_conv, q, k, v, filters, v_past, u_past)


def hyena_fft(q, k, v, filters, v_past, u_past):
    return _operator(_fft_conv, q, k, v, filters, v_past, u_past)


def hyena_recurrent(q, k, v, filters, v_past, u_past):
    """One token at a time: each step reads the whole history through the filters (decoding)."""
    outs = []
    for t in range(q.shape[2]):
        n = v_past.shape[2] + 1
        v_past = torch.cat([v_past, v[:, :, t : t + 1]], 2)
        reversed_lags = torch.arange(n - 1, -1, -1, device=q.device)
        u_t = k[:, :, t] * (filters[0][:, reversed_lags] * v_past).sum(2)
        u_past = torch.cat([u_past, u_t[:, :, None]], 2)
        outs.append(q[:, :, t] * (filters[1][:, reversed_lags] * u_past).sum(2))
    return torch.stack(outs, dim=2), (v_past, u_past)
