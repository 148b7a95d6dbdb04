"""Build specs for mechanisms of the form ``post(normalise(mod(q k^T * scale)) @ v)``.

A softmax-family mechanism is a score modifier plus a normaliser. Given those,
this module derives its reference (materialised, float64-capable), its fast
chunked form (linear memory, forward and backward) and its incremental form (a
KV cache), so each paper's file only states its equations.

Hooks, all optional, all receiving the mechanism's parameters (scalars and
tensor inputs) as keywords:

- ``make_mod(q, k, *, causal, scale, **params) -> score_mod | None``: a score
  modifier ``mod(scores, q_pos, k_pos)`` (positions are absolute, bottom-right
  aligned, so a modifier sees the same positions in every chunk and every
  incremental call); with ``mod_sees_mask=True`` it also receives the call's
  ``mask`` (Mega divides scores by the number of keys each query may attend to);
- ``make_reference_mod``: the same modifier written straight from the paper for
  the reference, when the fast one uses a trick (e.g. Music Transformer's skew);
- ``normaliser``: a :class:`Normaliser`, or ``normaliser(**params)`` building one;
- ``prepare(q, k, v, *, scale, **params) -> (q, k, v)``: per-token rescaling of
  q, k or v before attention (temperatures, l2-normalisation);
- ``postprocess(out, **params)``: runs after the weighted sum (ReLA's norm);
- ``key_weight(q, k, v, **params) -> (B, Hkv, Nk) | None``: the per-key factor
  ``prepare`` puts on the values (a value temperature); the attention weights
  carry it, so that ``weights @ v`` is the output.

The spec's ``weights`` are the reference's normalised score matrix (times
``key_weight``); with a ``postprocess``, ``weights_output`` applies it after
``weights @ v`` and ``weights_note`` (argument ``postprocess_note``) says what it is.

A softmax mechanism with neither ``prepare`` nor ``postprocess``, and either
no modifier or one declared ``mod_on_positions=True`` (it reads only the
scores, their positions and the parameters, never q or k themselves), records
``make_mod`` as ``spec.extra["softmax_score_mod"]``: context-parallel
strategies run it on any tile of a sharded sequence at global positions.
"""
from __future__ import annotations

import torch

from ..kernels.chunked import chunked_attention
from ..params import Param
from ..kernels.positions import repeat_kv
from ..reference import materialised_weights
from ..registry import ALL_PATTERNS, MechanismSpec, register
from ..scores.normalisers import SOFTMAX, Normaliser
from .kv_cache_step import default_form_of, kv_cache_step

# Tile sizes of the chunked form: execution choices, not part of the equations.
CHUNK_PARAMS = {
    "q_chunk": Param(512, int, "queries per tile of the chunked form", low=1),
    "kv_chunk": Param(1024, int, "keys per tile of the chunked form", low=1),
}


def _no_mod(q, k, **params):
    return None


def _equation_params(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if k not in CHUNK_PARAMS}


def register_score_mechanism(
    name: str,
    *,
    papers: tuple[str, ...],
    make_mod=None,
    make_reference_mod=None,
    normaliser=SOFTMAX,
    prepare=None,
    params: dict | None = None,
    tensor_inputs=None,
    inputs: dict | None = None,
    tensor_inputs_per_token: tuple[str, ...] = (),
    check_inputs=None,
    postprocess=None,
    patterns=ALL_PATTERNS,
    summary: str = "",
    family: str = "softmax",
    extra_fast: dict | None = None,
    default_forms: tuple[str, ...] | None = None,
    can_run: dict | None = None,
    auto_when: dict | None = None,
    wrap_step=None,
    test_params: dict | None = None,
    mod_sees_mask: bool = False,
    mod_on_positions: bool = False,
    dropout_forms: tuple[str, ...] = (),
    key_weight=None,
    postprocess_note: str = "",
) -> MechanismSpec:
    """Register a mechanism from its hooks (see the module docstring).

    ``extra_fast`` adds fast forms before the chunked one; ``default_forms`` (by
    default the first of ``extra_fast``, else ``chunked``), ``can_run`` and
    ``auto_when`` are the spec's dispatch rules (:mod:`attnkit.dispatch`); ``wrap_step(step) -> step`` wraps the KV-cache incremental form
    (e.g. to refuse a parameter setting that cannot be incremental);
    ``check_inputs(q, k, v, **params)`` validates tensor inputs before any work.
    """
    params = {**CHUNK_PARAMS, **(params or {})}  # a mechanism may set its own tile sizes

    def _run(q, k, v, causal, mask, scale, kw, make):
        eq = _equation_params(kw)
        if check_inputs is not None:
            check_inputs(q, k, v, **eq)
        if prepare is not None:
            q, k, v = prepare(q, k, v, scale=scale, **eq)
        seen = {"mask": mask} if mod_sees_mask else {}
        mod = make(q, k, causal=causal, scale=scale, **seen, **eq) if make is not None else None
        norm = normaliser if isinstance(normaliser, Normaliser) else normaliser(**eq)
        return q, k, v, mod, norm, eq

    def _post(out, eq):
        return postprocess(out, **eq) if postprocess is not None else out

    def weights(q, k, v, *, causal, mask, scale, **kw):
        q_, k_, _, mod, norm, eq = _run(q, k, v, causal, mask, scale, kw, make_reference_mod or make_mod)
        w = materialised_weights(q_, k_, causal=causal, mask=mask, scale=scale, score_mod=mod, normaliser=norm)
        factor = key_weight(q, k, v, **eq) if key_weight is not None else None
        return w if factor is None else w * repeat_kv(factor[..., None], q.shape[1]).transpose(-1, -2)

    def reference(q, k, v, *, causal, mask, scale, dropout_p=0.0, **kw):
        q_, k_, v_, mod, norm, eq = _run(q, k, v, causal, mask, scale, kw, make_reference_mod or make_mod)
        w = materialised_weights(q_, k_, causal=causal, mask=mask, scale=scale, score_mod=mod, normaliser=norm)
        if dropout_p:  # training-time dropout on the attention weights, as SDPA's dropout_p
            w = torch.nn.functional.dropout(w, dropout_p)
        return _post(w @ repeat_kv(v_, q.shape[1]), eq)

    def weights_output(w, q, k, v, **kw):
        return postprocess(w @ repeat_kv(v, q.shape[1]), **_equation_params(kw))

    def chunked(q, k, v, *, causal, mask, scale, q_chunk, kv_chunk, **kw):
        q, k, v, mod, norm, eq = _run(q, k, v, causal, mask, scale, kw, make_mod)
        out = chunked_attention(
            q, k, v, causal=causal, mask=mask, scale=scale, score_mod=mod,
            normaliser=norm, q_chunk=q_chunk, kv_chunk=kv_chunk,
        )
        return _post(out, eq)

    reference.__name__ = f"{name}_reference"
    chunked.__name__ = f"{name}_chunked"
    fast = dict(extra_fast or {})
    fast["chunked"] = chunked
    if default_forms is None:
        default_forms = (next(iter(fast)),)
    step = kv_cache_step(default_form_of(name))
    tileable = normaliser is SOFTMAX and prepare is None and postprocess is None
    extra = {}
    if tileable and not mod_sees_mask and (make_mod is None or mod_on_positions):
        extra["softmax_score_mod"] = make_mod if make_mod is not None else _no_mod
    return register(
        MechanismSpec(
            name=name,
            family=family,
            papers=papers,
            patterns=frozenset(patterns),
            reference=reference,
            fast=fast,
            default_forms=default_forms,
            can_run=dict(can_run or {}),
            auto_when=dict(auto_when or {}),
            step=wrap_step(step) if wrap_step is not None else step,
            params=params,
            tensor_inputs=tensor_inputs,
            inputs=inputs or {},
            tensor_inputs_per_token=tuple(tensor_inputs_per_token),
            summary=summary,
            test_params={"q_chunk": 16, "kv_chunk": 24, **(test_params or {})},
            dropout_forms=frozenset({"reference", *dropout_forms}),
            extra=extra,
            weights=weights,
            weights_output=weights_output if postprocess is not None else None,
            weights_note=postprocess_note,
        )
    )
