"""Length-scaled softplus attention (LSSA) and its re-weighted form (LSSAR).

Gao & Spratling, "Softplus Attention with Re-weighting Boosts Length
Extrapolation in Large Language Models" (2025). Softmax is split into a
positive map and an l1 normalisation; the map becomes Softplus of cosine
scores scaled by ``log d * log N_i`` (N_i = number of tokens query i sees:
``i + 1`` causal, all keys otherwise), an entropy-invariance scale factor:

    LSSA:  w_ij = softplus(log d log N_i cos(q_i, k_j)) / sum_j (same)
    LSSAR: w'_ij = relu(N_i w_ij - o_i)^p / sum_j relu(N_i w_ij - o_i)^p   (p = 15)

The re-weighting keeps weights above the uniform level 1/N_i and sharpens
them. The offset ``o_i`` is 1, except 0 for rows that see at most 3 tokens
(otherwise the first token, whose only weight is 1 = 1/N_0, would output
zeros); this detail is taken from a public re-implementation, as the authors'
code was not reachable from here. ``scale`` is not used: the paper's ``log d * log N_i`` replaces it.

Fast forms. LSSA is one pass of the chunked kernel ("ratio" normaliser).
LSSAR needs each row's LSSA denominator before it can re-weight, so its
chunked form (``chunked.py``) makes two O(N)-memory passes: the first sums softplus scores per
row, the second re-weights with the softmax kernel, because
``x^p / sum x^p = softmax(p log x)`` (no overflow for large p or N). The
reference computes both directly on the whole score matrix.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...params import Param
from ...kernels.positions import causal_mask, query_positions, repeat_kv
from ...registry import ALL_PATTERNS, MechanismSpec, register
from ...scores.normalisers import Normaliser
from ...validation import check_float
from ...scores.user_mask import apply_mask
from ...builders.kv_cache_step import kv_cache_step
from ...builders.score_pipeline import CHUNK_PARAMS, register_score_mechanism
from .chunked import lssar_chunked
from .scores import reweight_offset, unit_qk, visible_counts

PAPER = "Softplus Attention with Re-weighting Boosts Length Extrapolation in Large Language Models"
SOFTPLUS_L1 = Normaliser("softplus-l1", "ratio", phi=F.softplus)


def _length_scale_mod(kv_len, causal):
    def mod(scores, q_pos, k_pos):
        return scores * visible_counts(q_pos, kv_len, causal).log().to(scores.dtype)[:, None]

    return mod


def _lssa_prepare(q, k, v, *, scale, **_):
    qn, kn = unit_qk(q, k)
    return qn / scale, kn, v  # the kernel multiplies by scale again


register_score_mechanism(
    "lssa",
    papers=(PAPER,),
    make_mod=lambda q, k, *, causal, **_: _length_scale_mod(k.shape[2], causal),
    normaliser=SOFTPLUS_L1,
    prepare=_lssa_prepare,
    summary="softplus(log d log N_i cos(q, k)) with l1 row normalisation",
)


def lssar_reference(q, k, v, *, causal, mask, scale, p, **_):
    """The equations on the whole (Nq, Nk) matrix, in the order the paper states them."""
    return lssar_weights(q, k, v, causal=causal, mask=mask, scale=scale, p=p) @ repeat_kv(v, q.shape[1])


def lssar_weights(q, k, v, *, causal, mask, scale, p, **_):
    """The re-weighted attention matrix ``(B, H, Nq, Nk)``: rows sum to one over the allowed keys."""
    H, Nq, Nk = q.shape[1], q.shape[2], k.shape[2]
    qn, kn = unit_qk(q, k)
    s = qn @ repeat_kv(kn, H).transpose(-1, -2)
    counts = visible_counts(query_positions(Nq, Nk, q.device), Nk, causal).to(q.dtype)[:, None]
    s = s * counts.log()
    allowed = causal_mask(Nq, Nk, q.device).expand_as(s) if causal else torch.ones_like(s, dtype=torch.bool)
    s, allowed = apply_mask(s, allowed, mask)
    phi = F.softplus(s).masked_fill(~allowed, 0.0)
    w = phi / phi.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)
    x = torch.relu(counts * w - reweight_offset(counts)).masked_fill(~allowed, 0.0)
    x = x / x.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)  # ratio is scale-free
    r = x**p
    return r / r.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)


def _check_p(form):
    def checked(q, k, v, *, p, **kw):
        check_float("p", p)
        if p < 1:
            raise ValueError(f"p must be >= 1 (the re-weighting power), got {p}")
        return form(q, k, v, p=p, **kw)

    checked.__name__ = form.__name__
    return checked


register(
    MechanismSpec(
        name="lssar",
        family="softmax",
        papers=(PAPER,),
        patterns=ALL_PATTERNS,
        reference=_check_p(lssar_reference),
        fast={"chunked": _check_p(lssar_chunked)},
        step=kv_cache_step(_check_p(lssar_chunked)),
        params={"p": Param(15.0, float, 're-weighting power', low=1), **CHUNK_PARAMS},
        summary="LSSA re-weighted: relu(N_i w - 1)^p, l1-normalised (two O(N)-memory passes)",
        test_params={"q_chunk": 16, "kv_chunk": 24},
        weights=_check_p(lssar_weights),
    )
)
