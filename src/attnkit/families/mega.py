"""Mega's attention: single-head gated attention's score function, with Mega-chunk.

Ma, Zhou, Kong, He, Gui, Neubig, May & Zettlemoyer, "Mega: Moving Average Equipped
Gated Attention" (ICLR 2023). A Mega layer smooths its input with a
multi-dimensional damped EMA, computes ``Q, K`` from the smoothed sequence and
attends (``attnkit.nn.mega.MegaLayer``). The attention it runs, registered here as
``mega``, is

    O = f(S) V,   S_ij = scale q_i . k_j + b_rel(j - i)                      (attention_fn="softmax")
                  S_ij = scale q_i . k_j / n_i + b_rel(j - i)                (attention_fn="laplace" / "relu2")

- ``softmax``: row softmax (Mega's default; its ``scale`` is ``z^-1/2``, attnkit's default);
- ``laplace``: ``f(x) = (1 + erf((x - mu) / (sigma sqrt 2))) / 2`` with ``mu = sqrt(1/2)``,
  ``sigma = sqrt(1/(4 pi))``, elementwise, no row normalisation;
- ``relu2``: ``f(x) = relu(x)^2``, elementwise (from FLASH);

``n_i`` is the number of keys query ``i`` may attend to (Mega's ``lengths``: the
causal row length, or all keys, or under a user ``mask`` the keys it allows in
that range); the paper's element forms use ``scale=1.0``.
``b_rel`` is Mega's simple relative position bias, a learned scalar per offset
``j - i`` (tensor input ``rel_bias`` of shape ``(2L - 1,)``, entry ``j - i + L - 1``;
optional). ``chunk_size`` gives Mega-chunk: the sequence is split into chunks of
that many positions and each query attends only within its own chunk
(block-diagonal attention, linear in N); offsets and ``n_i`` are then counted
inside the chunk. Positions are absolute and bottom-right aligned, so the KV-cache
step reproduces one call exactly (Mega's decoder instead drops the cache at chunk
boundaries, a memory saving this step does not make).

Not here: Mega's attention dropout (a training regulariser of the layer, not of
the attention's equations).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..params import Param, TensorInput
from ..reference import materialised_attention
from ..scores.normalisers import SOFTMAX, Normaliser
from ..validation import check_int
from ..scores.user_mask import allowed_by
from ..builders.score_pipeline import register_score_mechanism

PAPER = "Mega: Moving Average Equipped Gated Attention"
LAPLACE_MU, LAPLACE_SIGMA = math.sqrt(0.5), math.sqrt(1.0 / (4 * math.pi))


def laplace(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf((x - LAPLACE_MU) / (LAPLACE_SIGMA * math.sqrt(2.0))))


def relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


NORMALISERS = {
    "softmax": SOFTMAX,
    "laplace": Normaliser("laplace", "sum", phi=laplace),
    "relu2": Normaliser("relu2", "sum", phi=relu2),
}


def _normaliser(*, attention_fn, **_):
    if attention_fn not in NORMALISERS:
        raise ValueError(f"attention_fn must be one of {sorted(NORMALISERS)}, got {attention_fn!r}")
    return NORMALISERS[attention_fn]


def _check(q, k, v, *, attention_fn, chunk_size, rel_bias=None):
    _normaliser(attention_fn=attention_fn)
    check_int("chunk_size", chunk_size, optional=True)
    if rel_bias is None:
        return
    if not isinstance(rel_bias, torch.Tensor):
        raise TypeError(f"rel_bias must be a torch.Tensor of shape (2L - 1,), got {type(rel_bias).__name__}")
    if rel_bias.ndim != 1 or rel_bias.shape[0] % 2 == 0:
        raise ValueError(f"rel_bias must have shape (2L - 1,) (one bias per offset -(L-1) .. L-1), got {tuple(rel_bias.shape)}")
    if rel_bias.dtype != q.dtype or rel_bias.device != q.device:
        raise TypeError(f"rel_bias is {rel_bias.dtype} on {rel_bias.device}; expected q's dtype {q.dtype} on {q.device}")
    span = (rel_bias.shape[0] + 1) // 2
    needed = max(q.shape[2], k.shape[2]) if chunk_size is None else min(chunk_size, max(q.shape[2], k.shape[2]))
    if span < needed:
        raise ValueError(
            f"rel_bias covers offsets up to {span - 1} but this call needs {needed - 1}: "
            f"L must be >= min(chunk_size, sequence length) = {needed}"
        )


def _mega_mod(q, k, *, causal, scale, attention_fn, chunk_size, rel_bias=None, mask=None):
    kv_len = k.shape[2]
    rows = None if mask is None or attention_fn == "softmax" else _keys_per_row(mask, q.shape[2], kv_len, causal, chunk_size)
    offset = kv_len - q.shape[2]  # query positions are bottom-right aligned

    def mod(scores, q_pos, k_pos):
        qp, kp = q_pos[:, None], k_pos[None, :]
        start = torch.div(qp, chunk_size, rounding_mode="floor") * chunk_size if chunk_size else None
        if attention_fn != "softmax":
            if rows is not None:
                n = rows[..., q_pos - offset, None]
            elif chunk_size:
                n = (qp - start + 1) if causal else (kv_len - start).clamp(max=chunk_size)
            else:
                n = (qp + 1) if causal else torch.full_like(qp, kv_len)
            scores = scores / n.clamp_min(1).to(scores.dtype)
        if rel_bias is not None:
            span = (rel_bias.shape[0] + 1) // 2
            rel = (kp - qp).clamp(-(span - 1), span - 1)  # pairs outside the span are masked below or causal
            scores = scores + rel_bias[rel + span - 1]
        if chunk_size:
            scores = scores.masked_fill((kp < start) | (kp >= start + chunk_size), float("-inf"))
        return scores

    return mod


def _keys_per_row(mask, q_len, kv_len, causal, chunk_size):
    """``n_i`` under a user mask: the keys query ``i`` may attend to (``(B', H', q_len)``, Mega's ``lengths``).

    Counted from a running sum of the mask's allowed keys over each query's range (causal prefix,
    its chunk), so a padding mask of one row stays one row.
    """
    counts = F.pad(allowed_by(mask).to(torch.int64).cumsum(dim=-1), (1, 0))  # counts[..., j] = allowed keys before j
    q_pos = torch.arange(kv_len - q_len, kv_len, device=mask.device)
    lo = torch.div(q_pos, chunk_size, rounding_mode="floor") * chunk_size if chunk_size else torch.zeros_like(q_pos)
    hi = q_pos + 1 if causal else torch.full_like(q_pos, kv_len)
    if chunk_size:
        hi = torch.minimum(hi, lo + chunk_size).clamp(max=kv_len)
    # queries before the first key (cross-attention with q_len > kv_len) count the keys of their range
    # that exist: none before key 0
    lo, hi = lo.clamp(0, kv_len), hi.clamp(0, kv_len)
    hi = torch.maximum(hi, lo)
    counts = counts.expand(*counts.shape[:2], q_len, kv_len + 1)
    index = lambda i: i.expand(*counts.shape[:2], q_len)[..., None]  # noqa: E731
    return (counts.gather(-1, index(hi)) - counts.gather(-1, index(lo))).squeeze(-1)


def _block_diagonal_refuses(q, k, v, *, chunk_size=None, **_) -> str | None:
    if chunk_size is None:
        return "chunk_size=None: no Mega-chunks (the chunked form runs full attention)"
    if k.shape[2] != q.shape[2]:
        return f"q_len {q.shape[2]} != kv_len {k.shape[2]}: Mega-chunks need queries and keys at the same positions"
    return None


def block_diagonal(q, k, v, *, causal, mask, scale, attention_fn, chunk_size, rel_bias=None, **tiles):
    """Mega-chunk in O(N chunk_size): each chunk's queries attend over that chunk's keys only.

    Runs self-attention with a ``chunk_size`` (queries and keys share positions): see
    :func:`_block_diagonal_refuses`; the default choice runs the chunked form for other calls.
    """
    N = q.shape[2]
    _check(q, k, v, attention_fn=attention_fn, chunk_size=chunk_size, rel_bias=rel_bias)
    outs = []
    for s in range(0, N, chunk_size):
        blk = slice(s, min(N, s + chunk_size))
        qb, kb, vb = q[:, :, blk], k[:, :, blk], v[:, :, blk]
        mb = None if mask is None else mask[:, :, blk if mask.shape[2] > 1 else slice(None), blk if mask.shape[3] > 1 else slice(None)]
        mod = _mega_mod(qb, kb, causal=causal, scale=scale, attention_fn=attention_fn, chunk_size=None,
                        rel_bias=rel_bias, mask=mb)
        outs.append(materialised_attention(qb, kb, vb, causal=causal, mask=mb, scale=scale, score_mod=mod,
                                           normaliser=NORMALISERS[attention_fn]))
    return torch.cat(outs, dim=2)


def _inputs(q, k, v, generator):
    L = max(q.shape[2], k.shape[2])
    return {"rel_bias": (0.3 * torch.randn(max(2 * L - 1, 1), generator=generator, dtype=torch.float64)).to(q.dtype)}


register_score_mechanism(
    "mega",
    papers=(PAPER,),
    make_mod=_mega_mod,
    normaliser=_normaliser,
    check_inputs=_check,
    params={"attention_fn": Param('softmax', str, "the attention function: softmax, or the paper's laplace / relu2", choices=('softmax', 'laplace', 'relu2')),
            "chunk_size": Param(None, int, 'Mega-chunk: attention within chunks of this many tokens; None: one chunk', low=1, optional=True)},
    tensor_inputs=_inputs,
    inputs={"rel_bias": TensorInput("(2L - 1,)", "relative-position bias, one per offset -(L-1) .. L-1; none when absent", required=False)},
    family="mega",
    extra_fast={"block_diagonal": block_diagonal},
    default_forms=("block_diagonal", "chunked"),
    can_run={"block_diagonal": _block_diagonal_refuses},
    summary="Mega's single-head attention: softmax / laplace / relu^2 of q.k (+ relative bias), Mega-chunk block-diagonal",
    test_params={"attention_fn": "laplace", "chunk_size": 16},
    mod_sees_mask=True,
)
