"""The two models ``attnkit bench kv`` runs a compressing cache in, behind one interface.

- :class:`AttnkitLM`: a :class:`attnkit.models.DecoderLM` checkpoint; its layers carry
  :class:`attnkit.cache.KVState` values through attnkit's incremental API.
- :class:`TinyLlama`: a transformers ``LlamaForCausalLM`` built from a config (random
  weights, GQA, RoPE); its cache is an :class:`attnkit.cache.Cache`.

A prompt is prefilled once with every layer recording its queries and full
store (:class:`Recorder`); because a policy compresses *after* the prompt
attended to itself in full, each policy's compressed cache is that policy
applied to the recorded stores, so the long prefill is not repeated per policy.
Decoding then feeds one token at a time through the compressed caches.
"""
from __future__ import annotations

import torch

from ..cache import KVState, NoCompression
from ..cache.razor import retrieval_heads, retrieval_scores
from ..cache.scores import query_positions, weights
from ..cache.store import same_storage

PERIOD = 64  # the random block repeated to find retrieval heads


class Recorder(NoCompression):
    """Keeps everything, and remembers each layer's full store and prompt queries."""

    needs_scores = True

    def __init__(self):
        super().__init__()
        self.layers = {}

    def step(self, store, q, scale, layer, *, in_place=False):
        if store.length == store.prompt:
            self.layers[layer] = (store, q, scale)
        return store


def compress(recorder: Recorder, policy) -> list:
    """Each layer's store after ``policy`` compressed the recorded prompt."""
    return [policy.step(store, q, scale, layer) if store.length == store.prompt and policy is not None else store
            for layer, (store, q, scale) in sorted(recorder.layers.items())]


class _Model:
    def retrieval(self):
        """RazorAttention's retrieval heads ``(layers, kv_heads)``: echo and induction scores on a random block
        of ``PERIOD`` tokens repeated, the paper's shares of query heads (computed once)."""
        if getattr(self, "_retrieval", None) is None:
            block = torch.randint(0, self.model.config.vocab_size, (1, PERIOD), generator=torch.Generator().manual_seed(1))
            _, recorder = self.prefill(block.repeat(1, 2))
            scores = []
            for layer in sorted(recorder.layers):
                store, q, scale = recorder.layers[layer]
                w = weights(q, query_positions(store, q.shape[2], q.device), store, scale)
                scores.append(retrieval_scores(w, PERIOD))
            echo, induction = (torch.stack(s) for s in zip(*scores))
            self._retrieval = retrieval_heads(echo, induction, kv_heads=store.k.shape[1])
        return self._retrieval


class AttnkitLM(_Model):
    name = "shakespeare-lm"

    def __init__(self, model):
        self.model = model.eval()
        self.layers = len(model.blocks)
        rope = model.blocks[0].mixer.rope
        self.head_dim = model.blocks[0].mixer.head_dim
        self.rotate = rope.rotate if rope is not None else (lambda x, positions: x)

    @torch.no_grad()
    def prefill(self, ids):
        recorder = Recorder()
        logits, _ = self.model(ids, state=[KVState(recorder, i) for i in range(self.layers)], return_state=True)
        return logits[:, -1], recorder

    def start(self, policy, stores):
        return [KVState(policy or NoCompression(), i, s) for i, s in enumerate(stores)]

    @torch.no_grad()
    def step(self, token, cache):
        logits, cache = self.model(token, state=cache, return_state=True)
        return logits[:, -1], cache

    @staticmethod
    def stores(cache):
        return [s.store for s in cache]

    def step_peak(self, before, cache) -> int:
        """Bytes held when a decode step returns: the new states' buffers and those of the states passed in that an
        eviction (or a buffer growing) replaced. The caller still holds the states it passed in, and a state is a
        value, never changed by a later call, so an eviction copies the kept tokens to a new buffer."""
        after = self.stores(cache)
        return sum(s.allocated_bytes() for s in after) + sum(
            old.allocated_bytes() for old, new in zip(before, after) if not same_storage(old, new))


class TinyLlama(_Model):
    name = "tiny-llama"

    def __init__(self, layers=2, dim=128, heads=4, kv_heads=2, vocab=256, seed=0):
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=layers,
                          num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=1 << 16)
        self.model, self.layers, self.head_dim = LlamaForCausalLM(cfg).eval(), layers, dim // heads
        from ..cache.hf import rotation

        self.rotate = rotation(self.model)

    @torch.no_grad()
    def prefill(self, ids):
        from ..cache import Cache

        recorder = Recorder()
        cache = Cache(recorder, model=self.model)
        logits = self.model(ids, cache=cache, logits_to_keep=1).logits
        cache.close()
        return logits[:, -1], recorder

    def start(self, policy, stores):
        from ..cache import Cache, CacheLayer
        from ..cache.hf import own_attention

        hooks = policy is not None and (policy.needs_scores or own_attention(policy))
        cache = Cache(policy or NoCompression(), model=self.model if hooks else None)
        for i, store in enumerate(stores):
            layer = CacheLayer(cache.policy, i, cache)
            layer.store, layer.is_initialized = store, True
            cache.layers.append(layer)
        return cache

    @torch.no_grad()
    def step(self, token, cache):
        return self.model(token, cache=cache).logits[:, -1], cache

    @staticmethod
    def stores(cache):
        return [layer.store for layer in cache.layers]

    @staticmethod
    def step_peak(before, cache) -> int:
        """The cache's peak so far, counted at every layer's update (a layer copied to a new buffer counted with
        its old one, which the model's attention still reads; evictions while decoding are in place)."""
        return cache.peak_bytes
