"""The front door: :func:`attention`, :func:`explain`, :func:`mechanisms`, :func:`spec`."""
from __future__ import annotations

import logging

import torch

from . import capture, dispatch, registry
from .cache.state import KVState
from .kernels.positions import repeat_kv
from .reference import weights_of_reference
from .dispatch import log
from .state import check_state, mark_state
from .validation import (check_declared_inputs, check_params, check_pattern, check_qkv, check_required_inputs, check_scale,
                         normalise_mask)


def attention(
    q,
    k,
    v,
    mechanism: str = "softmax",
    *,
    causal: bool = False,
    mask=None,
    scale: float | None = None,
    form: str | None = None,
    position=None,
    state=None,
    return_state: bool = False,
    return_weights: bool = False,
    dropout_p: float = 0.0,
    **params,
):
    """Attention ``(B, H, Nq, D) x (B, Hkv, Nk, D) x (B, Hkv, Nk, Dv) -> (B, H, Nq, Dv)``.

    Args:
        mechanism: a registered name (``attnkit.mechanisms()``).
        causal: query ``i`` sees keys ``0 .. Nk - Nq + i`` (bottom-right aligned).
        mask: boolean (True = attend) or additive float, broadcastable to
            ``(B, H, Nq, Nk)``, or a key-padding mask ``(B, Nk)``.
        scale: score scale; default ``1/sqrt(head_dim)``.
        form: ``"reference"`` or one of the mechanism's fast forms; by default the first of the
            spec's ``default_forms`` that can run the call (:func:`explain` says which, and why).
        position: a positional encoding applied to q and k (``attnkit.positional``),
            e.g. ``RoPE(head_dim)``; positions continue across incremental calls.
        state / return_state: incremental use; feed a sequence in pieces with the
            returned state and the outputs equal one call on the whole sequence.
        return_weights: also return the attention weights ``(B, H, Nq, Nk)``, as
            ``(out, weights)`` (``spec.weights``: exact for the softmax family and the
            patterns, zeros outside the pattern; the implicit matrix of the parallel form
            for recurrent mechanisms; ``spec.weights_description()`` says whether
            ``weights @ v`` is the output). One-shot calls only.
        dropout_p: dropout on the attention weights, as SDPA's (apply it in training
            only); for the forms with explicit weights (``spec.dropout_forms``: the
            softmax family's reference, softmax's SDPA form), refused elsewhere.
        **params: the mechanism's parameters and extra tensor inputs.

    Inside ``with attnkit.capture() as rec:`` every call also records its weights in ``rec``.
    """
    spec, mask, scale, params, incremental = _checked(q, k, v, mechanism, causal, mask, scale, form, state,
                                                     return_state, params)
    if not isinstance(return_weights, bool):
        raise TypeError(f"return_weights must be a bool, got {type(return_weights).__name__}")
    if return_weights:
        _check_return_weights(spec, incremental, dropout_p)
    if position is not None and not all(callable(getattr(position, m, None)) for m in ("apply", "apply_keys")):
        raise TypeError(f"position must be a positional encoding object from attnkit.positional, e.g. "
                        f"attnkit.positional.RoPE({q.shape[-1]}), got {type(position).__name__} {position!r}")
    if _is_empty(q, k):
        check_declared_inputs(spec, q, k, v, params)  # no form runs, so none checks them
        out = _empty_call(q, k, v, state, incremental, return_state)
        return (out, q.new_zeros(*q.shape[:3], k.shape[2])) if return_weights else out
    if position is not None:
        offset = state.length if state is not None else 0
        # per-token key inputs (a branch's own keys) turn with k, in the same call: one draw of positions for
        # encodings that draw them (randomized positions), stacked with k along the heads
        names = [n for n in spec.key_inputs if params.get(n) is not None]
        keys = [k, *(params[n] for n in names)]
        q, turned = position.apply(q, torch.cat(keys, 1) if names else k,
                                   q_offset=offset + k.shape[2] - q.shape[2], k_offset=offset)
        k, *branch = turned.split([x.shape[1] for x in keys], 1) if names else (turned,)
        params = {**params, **dict(zip(names, branch))}
    if dropout_p:
        params = {**params, "dropout_p": _check_dropout(spec, dropout_p, q, k, v, causal, mask, form, params, incremental)}
    recorders = capture.active()
    if recorders and incremental:
        out, state = _incremental_with_weights(spec, recorders, q, k, v, state, causal=causal, mask=mask, scale=scale,
                                               params=params)
        return (out, mark_state(state, spec.name, q)) if return_state else out
    if (recorders or return_weights) and not incremental:
        return _with_weights(spec, recorders, return_weights, q, k, v, causal=causal, mask=mask, scale=scale,
                             form=form, params=params)
    if isinstance(state, KVState):
        _check_cache_state(spec, state, mask)
        out, state = state.step(q, k, v, scale)
        return (out, state) if return_state else out
    if incremental:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s", dispatch.choose_form(spec, q, k, v, causal=causal, mask=mask, form=None, params=params,
                                                  incremental=True))
        out, state = _step(spec, q, k, v, state, causal=causal, mask=mask, scale=scale, **params)
        return (out, mark_state(state, spec.name, q)) if return_state else out
    return dispatch.run(spec, q, k, v, causal=causal, mask=mask, scale=scale, form=form, params=params)


def _check_return_weights(spec, incremental, dropout_p):
    if incremental:
        raise ValueError("return_weights=True is for one-shot calls; record the weights of incremental calls "
                         "(state / return_state) with attnkit.capture()")
    if dropout_p:
        raise ValueError("return_weights=True with dropout_p > 0: the weights would not be the ones the output used; "
                         "pass dropout_p=0.0")
    if spec.weights is None and spec.weights_note:
        raise ValueError(f"mechanism {spec.name!r} has no attention weights: {spec.weights_note}")


def _with_weights(spec, recorders, return_weights, q, k, v, *, causal, mask, scale, form, params):
    """The call's output and weights, each recorder given a record (weights None when the spec has none)."""
    edits = [r for r in recorders if r.edit is not None]
    if edits and params.get("dropout_p"):
        raise ValueError("attnkit.capture(edit=...) with dropout_p > 0: the edited weights would not be the ones used; "
                         "call model.eval() (or pass dropout_p=0.0)")
    from_weights = (any(r.grad for r in recorders) or bool(edits)) and not params.get("dropout_p")
    plain = {n: x for n, x in params.items() if n != "dropout_p"}
    weights = _weights_of(spec, q, k, v, causal=causal, mask=mask, scale=scale, params=plain)
    if weights is None and return_weights and not spec.weights_note:
        raise ValueError(f"mechanism {spec.name!r} has no attention weights: its reference is not one "
                         "materialised softmax whose weights @ v is the output, and its spec declares none")
    weights = _edited(spec, recorders, weights)
    if from_weights and weights is not None:
        out = _output_from(spec, recorders, weights, q, k, v, params)
    else:
        out = dispatch.run(spec, q, k, v, causal=causal, mask=mask, scale=scale, form=form, params=params)
    if recorders:
        kept = None
        if "kept" in spec.extra:
            kept = spec.extra["kept"](q, k, scale=scale, **{n: x for n, x in params.items() if n in spec.params})
        note = "" if weights is not None else (spec.weights_note or "its reference is not one materialised softmax")
        _record(recorders, spec, weights, causal, note, kept)
    return (out, weights) if return_weights else out


def _weights_of(spec, q, k, v, *, causal, mask, scale, params):
    """The mechanism's weights for a one-shot call (None when it has none)."""
    if spec.weights is not None:
        return spec.weights(q, k, v, causal=causal, mask=mask, scale=scale, **params)
    if not spec.weights_note:
        return weights_of_reference(spec.reference, q, k, v, causal=causal, mask=mask, scale=scale, **params)
    return None


def _edited(spec, recorders, weights):
    """The weights after every recorder's ``edit``."""
    edits = [r for r in recorders if r.edit is not None]
    if edits and weights is None:
        raise ValueError(f"attnkit.capture(edit=...) changes attention weights, and mechanism {spec.name!r} has none")
    for recorder in edits:
        weights = recorder.edit(recorder.module, weights)
    return weights


def _output_from(spec, recorders, weights, q, k, v, params):
    """The output computed from the weights (``weights @ v`` or the spec's ``weights_output``)."""
    if weights.requires_grad and any(r.grad for r in recorders):
        weights.retain_grad()
    if spec.weights_output is not None:
        return spec.weights_output(weights, q, k, v, **params)
    return weights @ repeat_kv(v, q.shape[1])


def _incremental_with_weights(spec, recorders, q, k, v, state, *, causal, mask, scale, params):
    """An incremental call inside ``attnkit.capture``: ``(out, state)``, each recorder given the weights of
    the new queries over every key the step read, with the keys' sequence positions.

    ``spec.step.read(k, v, state, mask, q=q, **params) -> (keys, values, mask, positions)`` says what the step
    read (``q`` for a step whose choice of keys depends on its queries); the weights are the spec's over them."""
    weights = keys = values = positions = None
    read = getattr(spec.step, "read", None)
    if isinstance(state, KVState):
        _check_cache_state(spec, state, mask)
        weights, values, positions = state.read(q, k, v, scale)
        out, new_state = state.step(q, k, v, scale)
    else:
        out, new_state = _step(spec, q, k, v, state, causal=causal, mask=mask, scale=scale, **params)
        if read is not None and (spec.weights is not None or not spec.weights_note):
            keys, values, read_mask, positions = read(k, v, state, mask, q=q, **params)
            weights = _weights_of(spec, q, keys, values, causal=True, mask=read_mask, scale=scale, params=params)
    if weights is not None:
        note = ""
    elif read is None and not isinstance(state, KVState):
        note = (f"incremental call: {spec.name}'s state summarises the keys before the call, so the call has no "
                "per-key weights (capture a one-shot call over the sequence)")
    else:
        note = spec.weights_note or "its reference is not one materialised softmax"
    weights = _edited(spec, recorders, weights)
    edits = any(r.edit is not None for r in recorders)
    if weights is not None and (edits or (weights.requires_grad and any(r.grad for r in recorders))):
        out = _output_from(spec, recorders, weights, q, keys, values, params)
    if positions is not None:
        positions = positions.expand(*q.shape[:2], positions.shape[-1])
    _record(recorders, spec, weights, causal, note, positions=positions)
    return out, new_state


def _record(recorders, spec, weights, causal, note, kept=None, positions=None):
    for recorder in recorders:
        kept_weights = weights if weights is None or recorder.grad else weights.detach()
        recorder.add(capture.AttentionRecord(spec.name, kept_weights, causal=causal, note=note, kept=kept,
                                             positions=positions))


def explain(q, k, v, mechanism: str = "softmax", *, causal: bool = False, mask=None, scale: float | None = None,
            form: str | None = None, state=None, return_state: bool = False, **params) -> dispatch.Choice:
    """Which form :func:`attention` would run for these arguments, and why (nothing is computed).

    Takes the arguments of :func:`attention` (``position`` does not change the choice)
    and checks them the same way; ``str(choice)`` reads e.g. ``"softmax: form 'sdpa'
    runs (the default; skipped block_sparse (no mask: nothing to skip))"``.
    """
    spec, mask, scale, params, incremental = _checked(q, k, v, mechanism, causal, mask, scale, form, state,
                                                     return_state, params)
    return dispatch.choose_form(spec, q, k, v, causal=causal, mask=mask, form=form, params=params,
                                incremental=incremental)


def _checked(q, k, v, mechanism, causal, mask, scale, form, state, return_state, params):
    """Every check of a call, before any work: (spec, mask, scale, params, incremental)."""
    spec = registry.get(mechanism)
    check_qkv(q, k, v)
    incremental = return_state or state is not None
    if state is not None and not isinstance(state, KVState):
        check_state(state, spec.name, q)
    cross = q.shape[2] != k.shape[2] and not incremental
    scale, params = _settings(spec, causal, cross, mask is not None, scale, q.shape[-1], form, incremental, params)
    if mask is not None:
        mask = normalise_mask(mask, q, k) if state is None else _incremental_mask(mask, q, k, state)
    if incremental and getattr(spec.step, "one_query_per_key", False) and q.shape[2] != k.shape[2]:
        raise ValueError(f"mechanism {spec.name!r} is a recurrence: its incremental calls take one query per new "
                         f"key, got q with {q.shape[2]} tokens and k with {k.shape[2]}")
    return spec, mask, scale, params, incremental


# Settings that passed _settings' checks, by their values: a decode loop checks its settings once.
_SETTLED: dict = {}
_SETTLED_LIMIT = 256
_PLAIN = (bool, int, float, str, type(None))


def _settings(spec, causal, cross, masked, scale, head_dim, form, incremental, params):
    """The checks of a call's settings (pattern, tensor inputs, params, mask support, scale, incremental use):
    ``(scale, params with the defaults)``. Settings of plain values (no tensor in params) are checked once."""
    key = None
    if (type(causal) in _PLAIN and type(scale) in _PLAIN and type(form) in _PLAIN
            and all(type(x) in _PLAIN for x in params.values())):
        # each value's type is part of the key: True == 1 == 1.0 would otherwise share one entry
        key = (id(spec), type(causal), causal, cross, masked, type(scale), scale, head_dim, form, incremental,
               *((n, type(x), x) for n, x in params.items()))
        settled = _SETTLED.get(key)
        if settled is not None and settled[0] is spec:
            return settled[1], settled[2]
    check_pattern(spec, causal, cross)
    check_required_inputs(spec, params)
    params = check_params(spec, params)
    if masked and not spec.supports_mask:
        raise ValueError(f"mechanism {spec.name!r} does not take a mask; pass mask=None")
    scale = check_scale(scale, head_dim)
    if incremental:
        if spec.step is None:
            raise ValueError(f"mechanism {spec.name!r} has no incremental form; call it without state/return_state")
        if not causal:
            raise ValueError("incremental use (state / return_state) needs causal=True")
        if form is not None:
            raise ValueError("form= selects a one-shot form; incremental calls always use the mechanism's step form")
    if key is not None:
        if len(_SETTLED) >= _SETTLED_LIMIT:
            _SETTLED.clear()
        _SETTLED[key] = (spec, scale, params)
    return scale, params


def _step(spec, q, k, v, state, **kw):
    """The mechanism's step; its forms call the state they continue ``initial_state``, the caller wrote ``state``."""
    try:
        return spec.step(q, k, v, state, **kw)
    except (ValueError, TypeError) as error:
        message = str(error)
        if state is None or not message.startswith("initial_state"):
            raise
        raise type(error)(message.replace("initial_state", "state", 1)) from error


def _is_empty(q, k) -> bool:
    return q.shape[0] == 0 or q.shape[1] == 0 or q.shape[2] == 0 or k.shape[2] == 0


def _empty_call(q, k, v, state, incremental, return_state):
    """Calls with nothing to attend, the same for every mechanism: an empty batch, zero heads or no
    queries give an empty output of shape ``(B, H, Nq, Dv)``; queries with no keys are fully masked
    rows, so zeros. An incremental call with no new tokens returns its state unchanged."""
    out = q.new_zeros(*q.shape[:3], v.shape[-1])
    if q.requires_grad or k.requires_grad or v.requires_grad:  # the output still belongs to the graph
        out = out + 0 * (q.sum() + k.sum() + v.sum())
    if not incremental:
        return out
    if q.shape[0] == 0 or q.shape[1] == 0:
        raise ValueError(f"incremental calls need batch >= 1 and heads >= 1; got q of shape {tuple(q.shape)}")
    if state is None:
        raise ValueError("an incremental call with no tokens and state=None has no state to return; "
                         "pass at least one token")
    return (out, state) if return_state else out


def _check_dropout(spec, dropout_p, q, k, v, causal, mask, form, params, incremental) -> float:
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0 <= dropout_p < 1:
        raise ValueError(f"dropout_p must be a float in [0, 1), got {dropout_p!r}")
    chosen = None if incremental else dispatch.choose_form(
        spec, q, k, v, causal=causal, mask=mask, form=form, params={**params, "dropout_p": float(dropout_p)}).form
    if incremental or chosen not in spec.dropout_forms:
        where = "incremental calls take" if incremental else f"form {chosen!r} of mechanism {spec.name!r} takes"
        offer = (f"; mechanism {spec.name!r} takes it with form= one of {sorted(spec.dropout_forms)}"
                 if spec.dropout_forms else
                 f"; {spec.name!r} has no explicit attention weights (use e.g. 'softmax', whose default form takes it)")
        raise ValueError(f"dropout_p: {where} no attention-weight dropout{offer}")
    return float(dropout_p)


def _check_cache_state(spec, state, mask):
    """An ``attnkit.cache.KVState`` runs softmax attention over the tokens its policy kept."""
    if spec.name != "softmax":
        needs = "scores tokens with softmax attention weights, which" if state.policy.needs_scores else "holds keys for softmax attention, which"
        raise ValueError(f"state is an attnkit.cache.KVState whose policy {state.policy!r} {needs} "
                         f"mechanism {spec.name!r} does not compute; use mechanism='softmax'")
    if mask is not None:
        raise ValueError("an attnkit.cache.KVState takes no mask (causality follows the kept tokens' positions)")


def _incremental_mask(mask, q, k, state):
    """During incremental calls a mask covers the new queries against every key seen so far."""
    if mask is None:
        return None
    import torch

    total = torch.empty(k.shape[0], k.shape[1], state.length + k.shape[2], 0, device=k.device)
    return normalise_mask(mask, q, total)


def mechanisms(family: str | None = None) -> list[str]:
    """Registered mechanism names, optionally of one family."""
    return registry.names(family)


def spec(name: str) -> registry.MechanismSpec:
    """The registry entry of a mechanism."""
    return registry.get(name)
