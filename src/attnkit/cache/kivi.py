"""KIVI: quantised keys and values, alone or under an eviction policy (storage in :mod:`attnkit.cache.quantised`).

Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache"
(2024): keys quantised per channel, values per token, in groups of ``group``,
to ``bits`` = 8, 4 or 2, the newest ``residual`` tokens in full precision.
Alone, every token is kept; the cache shrinks by storing fewer bits per number.

``KIVI(4, under=SnapKV(0.25))`` composes the two: the prompt is held in full
precision while the policy chooses the tokens to keep (its scores see exact
keys), then the kept tokens are quantised, in their order, with their
positions (key groups span consecutive *kept* tokens). Decoded tokens are
appended in KIVI's scheme. The policy must evict at prefill only
(``when="prefill"``): evicting from quantised groups later would mean
re-quantising, and the error would no longer be within half a step.
"""
from __future__ import annotations

from .policy import Policy
from .quantised import BITS, QuantisedKV


class KIVI(Policy):
    chunked = "exact"  # tokens are quantised in order, group by group, however they arrive

    def __init__(self, bits: int = 4, *, group: int = 32, residual: int = 128, under: Policy | None = None):
        if under is not None and (not isinstance(under, Policy) or isinstance(under, KIVI)):
            raise TypeError(f"under must be an eviction policy of attnkit.cache, got {type(under).__name__}")
        if under is not None and (under.when != "prefill" or under.ragged_rows):
            raise ValueError(f"KIVI quantises the tokens a policy kept at prefill: give it a policy with "
                             f"when='prefill' that keeps the same number of tokens per head, got {under!r}")
        super().__init__(1.0 if under is None else under.budget_value, when="both")
        if bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
        for name, value in (("group", group), ("residual", residual)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "group" else 0):
                raise ValueError(f"{name} must be an int >= {1 if name == 'group' else 0}, got {value!r}")
        self.bits, self.group, self.residual, self.under = bits, group, residual, under
        if under is not None:
            self.needs_scores, self.chunked, self.uneven_layers = under.needs_scores, under.chunked, under.uneven_layers

    def __repr__(self) -> str:
        under = "" if self.under is None else f", under={self.under!r}"
        return f"KIVI(bits={self.bits}, group={self.group}, residual={self.residual}{under})"

    def budget(self, layer: int, prompt: int) -> int:
        return prompt if self.under is None else self.under.budget(layer, prompt)

    def empty_store(self, prompt: int = 0):
        if self.under is not None:
            return self.under.empty_store(prompt)  # the prompt in full precision while the policy chooses
        return QuantisedKV(self.bits, self.group, self.residual, prompt=prompt)

    def step(self, store, q, scale, layer, *, in_place=False):
        if isinstance(store, QuantisedKV):
            return store
        if self.under is None:
            if store.used != store.length:
                raise ValueError("KIVI quantises a cache that holds every token; this one was already compressed")
            return self.empty_store().append(store.k, store.v)  # a full-precision cache, quantised
        store = self.under.step(store, q, scale, layer, in_place=in_place)
        return store if store.length < store.prompt else self.quantised(store)  # a prefill chunk stays exact

    def quantised(self, store):
        """The tokens ``under`` kept of the whole prompt (a full-precision layer), quantised in order."""
        fresh = QuantisedKV(self.bits, self.group, self.residual, length=store.length - store.used,
                            prompt=store.prompt, kept_pos=store.pos)
        return fresh.append(store.k, store.v)
