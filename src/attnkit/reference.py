"""Float64 exact forms: the oracle every fast form is tested against.

``materialised_attention`` is attention exactly as written in the papers:
the full ``(Nq, Nk)`` score matrix, a score modifier, the mask, a row
normaliser, and a product with V. It is slow and O(N^2) in memory on purpose.
"""
from __future__ import annotations

from contextvars import ContextVar

import torch

from .kernels.positions import causal_mask, query_positions, repeat_kv
from .scores.normalisers import SOFTMAX, Normaliser
from .scores.user_mask import apply_mask


def materialised_attention(
    q, k, v, *, causal: bool, mask, scale: float, score_mod=None, normaliser: Normaliser = SOFTMAX,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    weights = materialised_weights(q, k, causal=causal, mask=mask, scale=scale, score_mod=score_mod,
                                   normaliser=normaliser)
    taken = _TAKEN.get()
    if taken is not None:
        taken.append(weights)
    if dropout_p:  # training-time dropout on the attention weights, as SDPA's dropout_p
        weights = torch.nn.functional.dropout(weights, dropout_p)
    return weights @ repeat_kv(v, q.shape[1])


# Set by weights_of_reference: the weights of every materialised_attention call it runs.
_TAKEN: ContextVar[list | None] = ContextVar("attnkit_reference_weights", default=None)


def weights_of_reference(reference, q, k, v, **kw) -> torch.Tensor | None:
    """The attention weights of a reference that is one :func:`materialised_attention` over ``v``.

    Runs ``reference(q, k, v, **kw)``; when it made exactly one such call and its output is
    that call's ``weights @ v`` (no rescaled values, no gate or norm after it), returns the
    weights ``(B, H, Nq, Nk)``, else None. Mechanisms that do not declare ``spec.weights``
    get theirs this way.
    """
    taken = []
    token = _TAKEN.set(taken)
    try:
        out = reference(q, k, v, **kw)
    finally:
        _TAKEN.reset(token)
    if len(taken) != 1:
        return None
    weights = taken[0]
    rebuilt = weights @ repeat_kv(v, q.shape[1])
    if rebuilt.shape != out.shape or not torch.allclose(rebuilt, out, rtol=1e-5, atol=1e-6):
        return None
    return weights


def materialised_weights(
    q, k, *, causal: bool, mask, scale: float, score_mod=None, normaliser: Normaliser = SOFTMAX,
) -> torch.Tensor:
    """The ``(B, H, Nq, Nk)`` attention weights: normalised, zero where a key is not allowed."""
    H, Nq, Nk = q.shape[1], q.shape[2], k.shape[2]
    k = repeat_kv(k, H)
    scores = (q @ k.transpose(-1, -2)) * scale
    if score_mod is not None:
        scores = score_mod(scores, query_positions(Nq, Nk, q.device), torch.arange(Nk, device=q.device))
    allowed = causal_mask(Nq, Nk, q.device) if causal else None
    scores, allowed = apply_mask(scores, allowed, mask)
    if allowed is not None:
        allowed = allowed.expand_as(scores)
    return normaliser.weights(scores, allowed)
