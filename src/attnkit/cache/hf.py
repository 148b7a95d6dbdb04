"""The cache inside Hugging Face ``generate``: a ``transformers`` ``Cache`` subclass.

    cache = attnkit.cache.Cache(attnkit.cache.StreamingLLM(256))
    out = model.generate(input_ids, past_key_values=cache, max_new_tokens=64)

Each layer is a :class:`CacheLayer` holding a :class:`~attnkit.cache.store.LayerKV`.
transformers calls ``update`` with the new (already rotated) keys and values;
the layer appends them, returns the kept keys and values for the model's own
attention call (one per layer per step), then lets the policy compress.

Positions. ``get_seq_length`` is the number of tokens consumed, not kept, so
the position ids transformers derives from it (and ``generate``'s own
position ids, counted from the attention mask) stay the true positions after
eviction; kept keys keep the rotation of their own position. ``get_mask_sizes``
reports the kept length with an offset that puts the new keys at the new
queries' positions, so a causal mask over (kept + new) keys is right.

Policies that read attention weights (``needs_scores``) need the queries,
which transformers does not pass to a cache: give ``model=`` and the cache
computes them in a hook on each attention module (Llama-style modules with
``q_proj``, optional ``q_norm`` and their module's ``apply_rotary_pos_emb``).

Policies that keep a different number of tokens per head
(:class:`~attnkit.cache.AdaKV`, :class:`~attnkit.cache.RazorAttention`) store
ragged rows, which transformers' attention cannot mask per head, and
:class:`~attnkit.cache.PyramidKV`'s layers keep different lengths while
transformers builds one mask for all layers: with them
the cache needs ``model=`` too, and switches the model's attention
implementation to ``"attnkit_cache"`` (softmax attention over the kept keys,
masked by their positions, one call per layer) until :meth:`Cache.close`.

A long prompt can be prefilled in chunks (``Cache(policy, prompt=N)``, then
the model called on consecutive pieces, or :func:`attnkit.cache.chunked.prefill`):
the policy compresses after each chunk. The eviction a chunk calls for is
applied in place at the start of the layer's next ``update`` (after the
model's attention has read the keys), so a layer never holds more than one
buffer of its budget plus a chunk. Evictions while decoding are applied the
same way (the cache owns its buffers: nothing it holds was handed out as a
value), so a layer decodes in one buffer of its budget plus ``slack`` plus
one, where copying the kept tokens would hold the old buffer and the new one
together while the attention reads the old. Reading a layer's ``store``
applies a chosen eviction first.

Batches whose prompts are padded are not supported under a compressing
policy (the padding mask is indexed by position and evicted pads would shift
it); beam search, ``crop`` (assisted decoding) and reordering are refused.
"""
from __future__ import annotations

import sys
import weakref

import torch

from transformers.cache_utils import Cache as TransformersCache
from transformers.cache_utils import CacheLayerMixin

from transformers.modeling_utils import AttentionInterface

try:  # what transformers' output_attentions collects in this forward pass (None outside one)
    from transformers.utils.output_capturing import _active_collector as _COLLECTOR
except ImportError:  # pragma: no cover - other transformers versions pass output_attentions= instead
    _COLLECTOR = None

from .kivi import KIVI
from .policy import Policy, append_call, check_prompt, checked_policy
from .scores import attend, query_positions, weights
from .store import GROWTH, LayerKV, same_storage

ATTENTION = "attnkit_cache"


# id(keys a CacheLayer returned) -> (a weak reference to them, their sequence positions): what
# the model's attention call reads, for attnkit.capture (the keys die with the step, and so does the entry)
_READ: dict[int, tuple] = {}


def _remember_read(keys: torch.Tensor, positions: torch.Tensor) -> None:
    ident = id(keys)
    _READ[ident] = (weakref.ref(keys, lambda _: _READ.pop(ident, None)), positions)


def positions_read(keys: torch.Tensor) -> torch.Tensor | None:
    """Sequence positions ``(B, Hkv, L)`` of ``keys`` if a :class:`CacheLayer` just returned them to the
    model's attention call (kept keys and new ones), else None."""
    entry = _READ.get(id(keys))
    return entry[1] if entry is not None and entry[0]() is keys else None


def attentions_requested(kwargs: dict) -> bool:
    """Whether the running transformers forward pass collects attention weights (``output_attentions=True``):
    transformers >= 5 collects them from the attention modules' outputs, so an attention function that
    returns None for them leaves ``outputs.attentions`` silently empty."""
    collected = _COLLECTOR.get() if _COLLECTOR is not None else None
    if collected is None:
        return bool(kwargs.get("output_attentions"))
    return "attentions" in collected or "cross_attentions" in collected


class CacheLayer(CacheLayerMixin):
    is_sliding = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, policy: Policy, layer_idx: int, owner):
        super().__init__()
        self.policy, self.layer_idx, self._owner = policy, layer_idx, owner
        self._store, self.reading, self.pending = policy.empty_store(owner.prompt), None, None

    @property
    def store(self):
        """The layer's kept tokens (an eviction chosen by the last update is applied first, so read it between
        two forward passes, not between the layer's update and its attention call)."""
        self._settle()
        return self._store

    @store.setter
    def store(self, store) -> None:
        self._store, self.pending = store, None

    def _settle(self) -> None:
        """Apply the eviction the last update chose, in place (the model's attention has read the keys since)."""
        if self.pending is not None:
            held = self._store
            self._store, self.pending = self._finished(held.compact(*self.pending)), None
            self.keys, self.values = _tensors(self._store)
            self._owner._track(0 if same_storage(held, self._store) else held.allocated_bytes())

    def _finished(self, store):
        """``store``, or KIVI's quantised copy of it once the policy under KIVI evicted the whole prompt's."""
        quantises = isinstance(self.policy, KIVI) and self.policy.under is not None and store.length >= store.prompt
        return self.policy.quantised(store) if quantises else store

    def lazy_initialization(self, key_states, value_states) -> None:
        self.device, self.is_initialized = key_states.device, True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._settle()
        held = self._store
        store = append_call(self.policy, held, self.layer_idx, key_states, value_states)
        keys, values = _tensors(store)
        if not getattr(store, "ragged", False):
            _remember_read(keys, store.pos)
        if self._owner._ragged:
            self.reading = (store, keys, values)  # for the attention call that follows (attention_over_cache)
        q, scale = self._owner._take_queries(self.layer_idx, self.policy)
        kivi_under = isinstance(self.policy, KIVI) and self.policy.under is not None  # it quantises what under kept
        evictor = self.policy.under if kivi_under else self.policy
        if isinstance(store, LayerKV) and type(evictor).step is Policy.step:
            self._store, chosen = evictor.select(store, q, scale, self.layer_idx)
            if chosen is not None and self._evicts_in_place(self._store, chosen):
                self.pending = chosen[:2]  # applied once the model's attention has read keys, values
            else:
                self._store = self._finished(self._store if chosen is None else self._store.keep(*chosen))
        else:
            self._store = self.policy.step(store, q, scale, self.layer_idx)
        self.keys, self.values = _tensors(self._store)
        # a store copied to a new buffer lives on until the model's attention has read it (keys, values)
        self._owner._track(0 if same_storage(held, self._store) else held.allocated_bytes())
        return keys, values

    def _evicts_in_place(self, store, chosen) -> bool:
        """Whether the eviction ``chosen`` = ``(index, score, room)`` moves the kept tokens to the front of the
        layer's buffer rather than copying them to a new one: for a prefill chunk (the first chunk sized the
        buffer to the budget plus a chunk) and at decode, unless the buffer is more than ``GROWTH`` times the kept
        tokens plus their room (a whole prompt's, not yet evicted: the tokens are copied out of it). A prompt
        prefilled in one call is copied out of its prompt-sized buffer."""
        if store.length <= store.prompt:
            return bool(self._owner.prompt)
        index, _, room = chosen
        return store.capacity <= GROWTH * (index.shape[-1] + room)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        used = self._store.used if self.pending is None else self.pending[0].shape[-1]
        return used + query_length, self._store.length - used

    def get_seq_length(self) -> int:
        return self._store.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.store, self.keys, self.values, self.is_initialized = self.policy.empty_store(self._owner.prompt), None, None, False

    def _refuse(self, what: str):
        if self._store.length:
            raise ValueError(f"attnkit.cache.Cache does not support {what} once it holds tokens")

    def reorder_cache(self, beam_idx) -> None:
        self._refuse("beam search (reorder_cache)")

    def crop(self, tokens_to_remove: int) -> None:
        self._refuse("crop (assisted decoding)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._refuse("batch_repeat_interleave")

    def batch_select_indices(self, indices) -> None:
        self._refuse("batch_select_indices")


class Cache(TransformersCache):
    """A compressing KV cache for ``generate``; ``policy`` is an ``attnkit.cache`` policy (default: none).

    ``model``: needed by policies that score with queries or keep ragged rows; ``prompt``: the prompt's
    length when it is prefilled in several calls (chunks)."""

    def __init__(self, policy: Policy | None = None, *, model=None, prompt: int | None = None):
        policy = checked_policy(policy)
        check_prompt(prompt)
        super().__init__(layers=[])
        self.prompt = prompt or 0
        self.policy, self.peak_bytes, self._queries, self._hooks = policy, 0, {}, []
        self._ragged, self._restore = own_attention(policy), None
        if self._ragged and model is None:
            raise ValueError(f"{policy!r} keeps a different number of tokens per head or per layer, which transformers' "
                             "attention cannot mask: build the cache with model=your_model so it can attend over them "
                             "itself")
        if model is not None:
            self._hook_queries(model)
            if self._ragged:
                self._attend_in(model)

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        while len(self.layers) <= layer_idx:
            self.layers.append(CacheLayer(self.policy, len(self.layers), self))
        return self.layers[layer_idx].update(key_states, value_states, *args, **kwargs)

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.get_seq_length(layer_idx)

    def nbytes(self) -> int:
        """Bytes of the kept keys, values and positions over all layers."""
        return sum(layer.store.nbytes() for layer in self.layers)

    def allocated_bytes(self) -> int:
        """Bytes of the layers' buffers, spare capacity included."""
        return sum(layer._store.allocated_bytes() for layer in self.layers)  # the same before and after _settle

    def apply_evictions(self) -> None:
        """Apply the evictions the last forward pass chose (each layer does at its next update, or when its
        ``store`` is read): call it between forward passes, e.g. to count the peak of a finished prefill."""
        for layer in self.layers:
            layer._settle()

    def _track(self, copied: int) -> None:
        """``copied``: bytes of a layer's previous buffer, held until its replacement was written."""
        self.peak_bytes = max(self.peak_bytes, self.allocated_bytes() + copied)

    # queries for the policies that score with attention weights ------------
    def _take_queries(self, layer_idx: int, policy: Policy):
        if not policy.needs_scores:
            return None, None
        if layer_idx not in self._queries:
            raise ValueError(
                f"{policy!r} scores tokens with attention weights, which transformers does not pass to a cache: "
                "build the cache with model=your_model so it can compute the queries"
            )
        return self._queries.pop(layer_idx)

    def _hook_queries(self, model) -> None:
        modules = _attention_modules(model)
        if not modules:
            raise ValueError(f"{type(model).__name__} has no attention modules with q_proj and layer_idx; "
                             "attnkit.cache.Cache can only compute queries for Llama-style attention")
        owner = weakref.ref(self)
        for module in modules:
            rotate = getattr(sys.modules[type(module).__module__], "apply_rotary_pos_emb", None)
            if rotate is None:
                raise ValueError(f"{type(module).__name__}'s module has no apply_rotary_pos_emb; cannot compute its queries")
            self._hooks.append(module.register_forward_pre_hook(_query_hook(owner, rotate), with_kwargs=True))

    def _attend_in(self, model) -> None:
        owner = weakref.ref(self)
        modules = _attention_modules(model)
        for module in modules:
            module._attnkit_cache = owner
        self._restore = (model, model.config._attn_implementation, modules)
        model.config._attn_implementation = ATTENTION

    def close(self) -> None:
        """Remove the query hooks from the model (and give it back its attention implementation)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if self._restore is not None:
            model, implementation, modules = self._restore
            model.config._attn_implementation = implementation
            for module in modules:
                del module._attnkit_cache
            self._restore = None


def _attention_modules(model) -> list:
    """The model's Llama-style attention modules (with ``q_proj`` and ``layer_idx``)."""
    return [m for m in model.modules() if hasattr(m, "q_proj") and hasattr(m, "layer_idx")]


def _query_hook(owner, rotate):
    def hook(module, args, kwargs):
        cache = owner()
        if cache is None or (kwargs.get("cache") is not cache and kwargs.get("past_key_values") is not cache):
            return None
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        q = module.q_proj(hidden).view(*hidden.shape[:-1], -1, module.head_dim)
        if getattr(module, "q_norm", None) is not None:
            q = module.q_norm(q)
        q = q.transpose(1, 2)
        cos, sin = kwargs["position_embeddings"]
        q = rotate(q, q, cos, sin)[0]
        cache._queries[module.layer_idx] = (q.detach(), module.scaling)
        return None

    return hook


def _tensors(store):
    """The keys and values a layer hands to transformers: the kept ones, or a ragged layer's pages (which only
    the ``"attnkit_cache"`` attention reads, through the store)."""
    return store.storage() if getattr(store, "ragged", False) else (store.k, store.v)


def own_attention(policy) -> bool:
    """Whether ``policy`` needs the ``"attnkit_cache"`` attention: transformers builds one mask for every layer and
    head, which fits neither ragged rows nor layers of different kept lengths."""
    return policy.ragged_rows or policy.uneven_layers


def attention_over_cache(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function ``"attnkit_cache"``: the new queries over the keys the layer's
    :class:`CacheLayer` just returned, masked by their positions (and ragged rows' padding)."""
    cache = getattr(module, "_attnkit_cache", lambda: None)()
    reading = None if cache is None else cache.layers[module.layer_idx].reading
    if reading is None or reading[1] is not key:
        raise ValueError("the attnkit_cache attention implementation runs only with the attnkit.cache.Cache it was "
                         "set by; call cache.close() to give the model back its own")
    cache.layers[module.layer_idx].reading = None
    scale = scaling if scaling is not None else module.scaling
    out = attend(query, reading[0], scale, key, value)
    found = None
    if attentions_requested(kwargs):  # over the kept keys in the store's order (padding of ragged rows: 0)
        found = weights(query, query_positions(reading[0], query.shape[2], query.device), reading[0], scale)
        found = found.to(query.dtype)
    return out.transpose(1, 2).contiguous(), found


AttentionInterface.register(ATTENTION, attention_over_cache)


def rotation(model):
    """``rotate(x, positions)``: a transformers model's RoPE (its ``rotary_emb``, rotate-half pairs), for
    :class:`attnkit.cache.ExpectedAttention`."""
    rotary = getattr(getattr(model, "model", model), "rotary_emb", None)
    if rotary is None:
        raise ValueError(f"{type(model).__name__} has no rotary_emb; cannot rotate queries for it")

    def rotate(x, positions):
        cos, sin = rotary(x, positions[None].to(x.device))
        cos, sin = cos[0].to(x.dtype), sin[0].to(x.dtype)
        half = x.shape[-1] // 2
        turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + turned * sin

    return rotate
