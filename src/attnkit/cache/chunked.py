"""Prefill a long prompt in chunks, compressing as they arrive: :func:`prefill`.

A policy applied after the prompt attended to itself in full needs the full
prompt's keys and values in memory first. Fed ``chunk`` tokens at a time, a
layer holds at most its budget plus one chunk: after each chunk the policy
evicts down to the budget (``chunked = "exact"`` policies keep exactly what
one call keeps, ``"approximate"`` ones score with queries that saw only the
tokens kept so far; the others are refused, see :mod:`attnkit.cache.policy`).

- an attnkit :class:`~attnkit.models.DecoderLM`: the states between two
  chunks are the driver's own (no caller ever sees them, and each is read
  once, by the call that continues it), so the policy evicts in the layer's
  buffer instead of copying the kept tokens to a new one: one buffer of the
  layer's budget plus a chunk per layer. The states returned are values like
  any other: a later call copies before it evicts;
- a transformers model: an :class:`attnkit.cache.Cache` with ``prompt=``, whose
  layers evict in place (one buffer each); ``cache.close()`` it when done.

``peak_bytes`` is the most the layers' buffers held at once (spare slots
included), counted at every layer of every chunk.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .state import KVState
from .store import same_storage


@dataclass
class Prefilled:
    logits: torch.Tensor  # (B, vocab): the prompt's last position
    cache: object  # the layers' KVStates (attnkit) or the Cache (transformers)
    peak_bytes: int


@torch.no_grad()
def prefill(model, ids: torch.Tensor, policy, *, chunk: int) -> Prefilled:
    """Run ``ids (B, N)`` through ``model`` ``chunk`` tokens at a time with ``policy`` compressing after each."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1 (tokens per prefill call), got {chunk!r}")
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"ids must be a non-empty (batch, seq) tensor, got {getattr(ids, 'shape', type(ids).__name__)}")
    if hasattr(model, "blocks") and hasattr(model, "embed"):
        return _attnkit(model, ids, policy, chunk)
    return _transformers(model, ids, policy, chunk)


class _PrefillState(KVState):
    """A layer's state between two chunks of :func:`prefill`: held by the driver alone and never read again once
    the next chunk continued it, so the policy evicts in its buffer (``in_place``), which the first chunk sized
    to the layer's budget plus a chunk."""

    def _evicted(self, store, q, scale):
        return self.policy.step(store, q, scale, self.layer, in_place=True)


def _attnkit(model, ids, policy, chunk):
    n = ids.shape[1]
    # a prompt that fits one chunk fills a buffer of its own length: its kept tokens are better copied out of it
    state = _PrefillState if chunk < n else KVState
    states = [state(policy, i, prompt=n) for i in range(len(model.blocks))]
    held, peak = [0] * len(states), 0
    for lo in range(0, n, chunk):
        x = model.embed(ids[:, lo : lo + chunk])
        for i, block in enumerate(model.blocks):
            old = states[i]
            x, states[i] = block(x, causal=True, state=old, return_state=True)
            new = states[i].store.allocated_bytes()
            both = new + (0 if same_storage(old.store, states[i].store) else held[i])
            peak = max(peak, sum(held) - held[i] + both)
            held[i] = new
            del old
    returned = [KVState(state.policy, state.layer, state.store) for state in states]  # values from here on
    return Prefilled(model.head(model.norm(x[:, -1])), returned, peak)


def _transformers(model, ids, policy, chunk):
    from .hf import Cache, own_attention

    cache = Cache(policy, model=model if policy is not None and (policy.needs_scores or own_attention(policy)) else None,
                  prompt=ids.shape[1])
    for lo in range(0, ids.shape[1], chunk):
        logits = model(ids[:, lo : lo + chunk], cache=cache, logits_to_keep=1).logits
    cache.apply_evictions()  # the last chunk's (KIVI quantises then), counted in the peak
    return Prefilled(logits[:, -1], cache, cache.peak_bytes)
