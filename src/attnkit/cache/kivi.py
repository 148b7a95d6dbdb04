"""KIVI: quantised keys and values, no eviction (storage in :mod:`attnkit.cache.quantised`).

Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache"
(2024): keys quantised per channel, values per token, in groups of ``group``,
to ``bits`` = 8, 4 or 2, the newest ``residual`` tokens in full precision.
Every token is kept; the cache shrinks by storing fewer bits per number.
"""
from __future__ import annotations

from .policy import Policy
from .quantised import BITS, QuantisedKV


class KIVI(Policy):
    chunked = "exact"  # tokens are quantised in order, group by group, however they arrive

    def __init__(self, bits: int = 4, *, group: int = 32, residual: int = 128):
        super().__init__(1.0, when="both")
        if bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
        for name, value in (("group", group), ("residual", residual)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "group" else 0):
                raise ValueError(f"{name} must be an int >= {1 if name == 'group' else 0}, got {value!r}")
        self.bits, self.group, self.residual = bits, group, residual

    def __repr__(self) -> str:
        return f"KIVI(bits={self.bits}, group={self.group}, residual={self.residual})"

    def empty_store(self, prompt: int = 0):
        return QuantisedKV(self.bits, self.group, self.residual, prompt=prompt)

    def step(self, store, q, scale, layer):
        if isinstance(store, QuantisedKV):
            return store
        if store.used != store.length:
            raise ValueError("KIVI quantises a cache that holds every token; this one was already compressed")
        return self.empty_store().append(store.k, store.v)  # a full-precision cache, quantised
