"""FlexAttention's equations, materialised in float64: the oracle of :func:`attnkit.flex_attention`.

FlexAttention (Dong, Feng, Liang, Ling, He and Jin, "Flex Attention: A
Programming Model for Generating Optimized Attention Kernels", 2024) writes
attention with two user functions of the indices:

    S[b, h, i, j] = scale * q[b, h, i] . k[b, h // G, j]          (G = query heads per kv head)
    S'[b, h, i, j] = score_mod(S[b, h, i, j], b, h, i, j)           if mask_mod(b, h, i, j)
                   = -inf                                          otherwise
    P[b, h, i, :] = softmax(S'[b, h, i, :])                          (a row with no allowed key: P = 0)
    O[b, h, i]    = sum_j P[b, h, i, j] v[b, h // G, j]
    lse[b, h, i]  = log sum_j exp S'[b, h, i, j]                     (-inf for a row with no allowed key)
"""
from __future__ import annotations

import torch

from ..kernels.positions import repeat_kv


def flex_reference(query, key, value, score_mod=None, mask_mod=None, scale: float | None = None):
    """``(out, lse)`` in float64 from the equations above, every pair materialised (small sizes only)."""
    q, k, v = (t.to(torch.float64) for t in (query, key, value))
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    k, v = repeat_kv(k, H), repeat_kv(v, H)
    scale = D ** -0.5 if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    dev = q.device
    b = torch.arange(B, device=dev).view(-1, 1, 1, 1)
    h = torch.arange(H, device=dev).view(1, -1, 1, 1)
    i = torch.arange(Nq, device=dev).view(1, 1, -1, 1)
    j = torch.arange(Nk, device=dev).view(1, 1, 1, -1)
    if score_mod is not None:
        s = torch.broadcast_to(score_mod(s, b, h, i, j), s.shape).to(torch.float64)
    if mask_mod is not None:
        s = s.masked_fill(~torch.broadcast_to(mask_mod(b, h, i, j), s.shape), float("-inf"))
    alive = torch.isfinite(s).any(dim=-1, keepdim=True)
    m = torch.where(alive, s.amax(dim=-1, keepdim=True), torch.zeros_like(s[..., :1]))
    e = torch.exp(s - m)
    total = e.sum(-1, keepdim=True)
    out = (e / torch.where(alive, total, torch.ones_like(total))) @ v
    lse = torch.where(alive, m + torch.log(torch.where(alive, total, torch.ones_like(total))), float("-inf"))
    return out, lse.squeeze(-1)
