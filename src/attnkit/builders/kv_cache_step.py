"""Incremental forms of mechanisms that keep keys and values: all of them (:class:`KVCache`), or a
pattern's sinks and window (:class:`WindowKVCache`)."""
from __future__ import annotations

import torch

from .. import registry
from ..dispatch import choose_form
from ..state import KVCache, WindowKVCache


def kv_cache_step(form):
    """Incremental form for any mechanism whose one-shot form handles ``q_len <= kv_len``.

    Causal attention is bottom-right aligned, so running the one-shot form on
    the new queries against the whole cache is exactly the one-shot result.
    """

    def step(q, k, v, state, *, causal, mask, scale, **params):
        state = KVCache(k, v) if state is None else state.append(k, v)
        return form(q, state.k, state.v, causal=causal, mask=mask, scale=scale, **params), state

    step.__name__ = f"kv_cache_step({getattr(form, '__name__', 'form')})"
    step.read = read_every_key
    return step


def read_every_key(k, v, state, mask, **params):
    """What a step over every key so far reads (a state with ``.k``, ``.v``: :class:`KVCache` or a
    :class:`~attnkit.state.DigestKVCache`): ``(keys, values, mask, positions)``, for ``attnkit.capture``."""
    keys = k if state is None else torch.cat([state.k, k], dim=2)
    values = v if state is None else torch.cat([state.v, v], dim=2)
    return keys, values, mask, torch.arange(keys.shape[2], device=k.device)



def window_cache_step(form, bound):
    """Incremental form for a pattern whose queries never see a key once ``bound(**params) = (sinks, window)``
    says it is gone: the one-shot form on the held keys and the new ones, then the state trimmed."""

    def step(q, k, v, state, *, causal, mask, scale, **params):
        sinks, window = bound(**params)
        if state is None:
            state = WindowKVCache.empty_like(k, v, sinks, window)
        full = state.append(k, v)
        out = form(q, full.k, full.v, causal=causal, mask=full.columns(mask), scale=scale, **params)
        return out, full.trimmed()

    def read(k, v, state, mask, **params):
        """What the step's one-shot call reads: the held sinks and window, then the new tokens."""
        sinks, window = bound(**params)
        full = (WindowKVCache.empty_like(k, v, sinks, window) if state is None else state).append(k, v)
        return full.k, full.v, full.columns(mask), full.positions()

    step.__name__ = f"window_cache_step({getattr(form, '__name__', 'form')})"
    step.read = read
    return step


def default_form_of(name: str):
    """A form that runs what a call to mechanism ``name`` without ``form=`` runs (for its step form)."""

    def default_form(q, k, v, *, causal, mask, scale, **params):
        spec = registry.get(name)
        choice = choose_form(spec, q, k, v, causal=causal, mask=mask, form=None, params=params)
        return spec.form(choice.form)(q, k, v, causal=causal, mask=mask, scale=scale, **params)

    default_form.__name__ = f"{name}_default_form"
    return default_form
