"""Mechanisms with one learned score per key and kv head (DMA's deltas, SPARSEK's key scores): the example
input, its check, and an incremental form over a :class:`~attnkit.state.ScoredKVCache` (DMA's; SPARSEK
decodes with a smaller state of its own)."""
from __future__ import annotations

import torch

from ..state import ScoredKVCache
from ..validation import check_tensor


def key_score_inputs(name: str):
    """``tensor_inputs`` of a spec whose input ``name`` holds one score per key: ``(B, Hkv, N)`` random normal
    scores in q's dtype, on q's device."""

    def make(q, k, v, generator=None) -> dict:
        B, Hkv, N = k.shape[0], k.shape[1], k.shape[2]
        return {name: torch.randn(B, Hkv, N, generator=generator, dtype=q.dtype).to(q.device)}

    make.__name__ = f"{name}_inputs"
    return make


def check_key_scores(name: str, q, k, scores) -> None:
    """ValueError/TypeError unless ``scores`` (the input ``name``) is ``(batch, kv_heads, keys)`` like ``k``."""
    check_tensor(name, scores, (k.shape[0], k.shape[1], k.shape[2]), q, what="(batch, kv_heads, keys)")


def scored_kv_cache_step(form, name: str):
    """Incremental form: the cache and the scores grow together, then ``form`` (any ``q_len <= kv_len``) runs the
    new queries against all of them (causal attention is bottom-right aligned: exactly the one-shot result)."""

    def step(q, k, v, state, *, causal, mask, scale, **params):
        scores = params.pop(name)
        check_key_scores(name, q, k, scores)
        state = ScoredKVCache.extend(state, k, v, scores)
        out = form(q, state.kv.k, state.kv.v, causal=causal, mask=mask, scale=scale, **{name: state.scores}, **params)
        return out, state

    step.__name__ = f"scored_kv_cache_step({getattr(form, '__name__', 'form')})"
    return step
