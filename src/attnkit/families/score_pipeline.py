"""Build specs for mechanisms of the form ``normalise(mod(q k^T * scale)) @ v``.

A softmax-family mechanism is a score modifier plus a normaliser. Given those,
this module derives its reference (materialised, float64-capable), its fast
chunked form (linear memory, forward and backward) and its incremental form (a
KV cache), so each paper's file only states its equations.
"""
from __future__ import annotations

from ..kernels.chunked import chunked_attention
from ..reference import materialised_attention
from ..registry import ALL_PATTERNS, MechanismSpec, register
from ..scores.normalisers import SOFTMAX
from ..state import kv_cache_step


# Tile sizes of the chunked form: execution choices, not part of the equations.
CHUNK_PARAMS = {"q_chunk": 512, "kv_chunk": 1024}


def _equation_params(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if k not in CHUNK_PARAMS}


def register_score_mechanism(
    name: str,
    *,
    papers: tuple[str, ...],
    make_mod=None,
    normaliser=SOFTMAX,
    params: dict | None = None,
    tensor_inputs=None,
    postprocess=None,
    patterns=ALL_PATTERNS,
    summary: str = "",
    family: str = "softmax",
    extra_fast: dict | None = None,
    test_params: dict | None = None,
) -> MechanismSpec:
    """Register a mechanism given ``make_mod(q, k, **params) -> score_mod or None``.

    ``postprocess(out, **params)`` runs after the weighted sum (e.g. ReLA's
    output normalisation); ``extra_fast`` adds more fast forms before the chunked one.
    """
    params = {**(params or {}), **CHUNK_PARAMS}

    def _mod(q, k, kw):
        return make_mod(q, k, **_equation_params(kw)) if make_mod is not None else None

    def _post(out, kw):
        return postprocess(out, **_equation_params(kw)) if postprocess is not None else out

    def reference(q, k, v, *, causal, mask, scale, **kw):
        out = materialised_attention(
            q, k, v, causal=causal, mask=mask, scale=scale, score_mod=_mod(q, k, kw), normaliser=normaliser
        )
        return _post(out, kw)

    def chunked(q, k, v, *, causal, mask, scale, q_chunk, kv_chunk, **kw):
        out = chunked_attention(
            q, k, v, causal=causal, mask=mask, scale=scale, score_mod=_mod(q, k, kw),
            normaliser=normaliser, q_chunk=q_chunk, kv_chunk=kv_chunk,
        )
        return _post(out, kw)

    reference.__name__ = f"{name}_reference"
    chunked.__name__ = f"{name}_chunked"
    fast = dict(extra_fast or {})
    fast["chunked"] = chunked
    default_fast = next(iter(fast.values()))
    return register(
        MechanismSpec(
            name=name,
            family=family,
            papers=papers,
            patterns=frozenset(patterns),
            reference=reference,
            fast=fast,
            step=kv_cache_step(default_fast),
            params=params,
            tensor_inputs=tensor_inputs,
            summary=summary,
            test_params={"q_chunk": 16, "kv_chunk": 24, **(test_params or {})},
        )
    )
