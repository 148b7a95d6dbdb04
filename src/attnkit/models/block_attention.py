"""Block-Attention for RAG: Sun, Sun, et al., "Block-Attention for Efficient RAG" (2024).

A retrieval-augmented prompt is cut into blocks: the retrieved passages, then a final block (the
question). Each passage attends only to itself (causally); the final block attends to every
token before it:

    allowed(i, j) = j <= i  and  (block(i) == block(j)  or  block(i) is the final block)

(:func:`block_attention_mask`; a model is fine-tuned under it so that it reads passages it has
not seen attend to each other). A passage's keys and values then depend on the passage alone,
so they can be computed once and **reused** in every prompt that retrieves it. Only their
positions change: a passage encoded from position 0 and placed at offset ``o`` needs its keys
rotated by ``o`` (**position re-encoding**). With RoPE, attention inside a passage depends on
relative positions only, so every layer's hidden states of the passage are the same at any
offset, and rotating the cached keys by ``o`` gives exactly the keys of the passage encoded at
``o``: the reused prompt equals the one-shot forward under the block mask.

- :func:`encode_blocks`: each passage through the model alone, from position 0 (the per-layer
  KV caches, reusable);
- :func:`assemble`: the caches of the passages of one prompt placed one after another, keys
  re-encoded at their offsets;
- the final block is then prefilled on top: ``model(question, state=assemble(...))``.

The model is a :class:`~attnkit.models.DecoderLM` whose layers are softmax-family attention with
RoPE (``ModelConfig(rope=True)``); ``model(tokens, mask=block_attention_mask(lengths))`` is its
training form.
"""
from __future__ import annotations

import torch

from ..nn import Attention
from ..state import KVCache, mark_state
from .lm import DecoderLM


def block_attention_mask(lengths, *, device=None) -> torch.Tensor:
    """Boolean ``(N, N)`` for blocks of ``lengths`` tokens (the last one the final block): passages see
    themselves, the final block sees everything (causality is added by the causal call)."""
    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
        raise ValueError(f"lengths must be a non-empty sequence of positive ints (tokens per block), got {lengths!r}")
    ids = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))
    return (ids[:, None] == ids[None, :]) | (ids[:, None] == len(lengths) - 1)


def _attention_layers(model: DecoderLM) -> list[Attention]:
    if not isinstance(model, DecoderLM):
        raise TypeError(f"model must be an attnkit.models.DecoderLM, got {type(model).__name__}")
    layers = [block.mixer for block in model.blocks]
    for i, layer in enumerate(layers):
        if not isinstance(layer, Attention) or layer.rope is None:
            raise ValueError(f"layer {i} is not attention with RoPE: block attention re-encodes positions by "
                             f"rotating cached keys, which needs RoPE attention in every layer")
    return layers


def encode_blocks(model: DecoderLM, blocks) -> list[list[KVCache]]:
    """Each passage ``(B, n_i)`` through ``model`` alone, from position 0: its per-layer KV caches."""
    _attention_layers(model)
    encoded = []
    for tokens in blocks:
        _, states = model(tokens, return_state=True)
        for s in states:
            if not isinstance(s, KVCache):
                raise ValueError(f"a layer returned a {type(s).__name__}; block attention reuses plain KV caches")
        encoded.append(states)
    return encoded


def assemble(model: DecoderLM, encoded) -> list[KVCache]:
    """The per-layer state of a prompt made of the passages ``encoded`` (from :func:`encode_blocks`), in order:
    each passage's keys rotated from positions ``0..n-1`` to ``offset..offset+n-1``."""
    layers = _attention_layers(model)
    if not encoded:
        raise ValueError("encoded must hold at least one passage")
    states = []
    for i, layer in enumerate(layers):
        keys, values, offset = [], [], 0
        for passage in encoded:
            cache = passage[i]
            shift = torch.full((cache.length,), offset, device=cache.k.device)
            keys.append(layer.rope.rotate(cache.k, shift))  # R(o) R(p) k = R(o + p) k
            values.append(cache.v)
            offset += cache.length
        states.append(mark_state(KVCache(torch.cat(keys, dim=2), torch.cat(values, dim=2)), layer.mechanism))
    return states
