"""LSSAR's chunked form: two O(N)-memory passes of the chunked kernel (see the package docstring)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...kernels.chunked import chunked_attention
from ...scores.normalisers import SOFTMAX, Normaliser
from ...scores.user_mask import allowed_by
from .scores import reweight_offset, unit_qk, visible_counts

# LSSAR's first pass sums softplus scores that its score modifier has already computed.
_IDENTITY_SUM = Normaliser("identity-sum", "sum", phi=lambda s: s)


def _split_mask(mask):
    """(boolean mask for the kernel, additive values a modifier adds before the nonlinearity)."""
    if mask is None or mask.dtype == torch.bool:
        return mask, None
    return allowed_by(mask), mask.masked_fill(torch.isneginf(mask), 0.0)


def _softplus_scores(kv_len, q_len, causal, additive):
    offset = kv_len - q_len

    def scores(s, q_pos, k_pos):
        counts = visible_counts(q_pos, kv_len, causal).to(s.dtype)[:, None]
        s = s * counts.log()
        if additive is not None:
            rows = slice(int(q_pos[0]) - offset, int(q_pos[-1]) - offset + 1)
            s = s + additive[..., rows, int(k_pos[0]) : int(k_pos[-1]) + 1]
        return F.softplus(s), counts

    return scores


def lssar_chunked(q, k, v, *, causal, mask, scale, p, q_chunk, kv_chunk, **_):
    qn, kn = unit_qk(q, k)
    allowed, additive = _split_mask(mask)
    phi = _softplus_scores(k.shape[2], q.shape[2], causal, additive)
    run = dict(causal=causal, mask=allowed, scale=1.0, q_chunk=q_chunk, kv_chunk=kv_chunk)
    # Pass 1: every row's LSSA denominator Z_i (softplus is applied by the modifier).
    ones = torch.ones(*k.shape[:3], 1, dtype=q.dtype, device=q.device)
    z = chunked_attention(qn, kn, ones, score_mod=lambda s, qp, kp: phi(s, qp, kp)[0], normaliser=_IDENTITY_SUM, **run)
    offset = k.shape[2] - q.shape[2]

    def log_reweighted(s, q_pos, k_pos):
        soft, counts = phi(s, q_pos, k_pos)
        zi = z[:, :, int(q_pos[0]) - offset : int(q_pos[-1]) - offset + 1]
        x = counts * soft / zi.clamp_min(torch.finfo(s.dtype).tiny) - reweight_offset(counts)
        return torch.where(x > 0, p * torch.log(x.clamp_min(torch.finfo(s.dtype).tiny)), float("-inf"))

    # Pass 2: relu(x)^p / sum relu(x)^p == softmax(p log x), x <= 0 dropped.
    return chunked_attention(qn, kn, v, score_mod=log_reweighted, normaliser=SOFTMAX, **run)
