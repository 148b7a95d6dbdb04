"""StreamingLLM: attention sinks + a recent window.

Xiao et al., "Efficient Streaming Language Models with Attention Sinks" (2024).
The cache keeps the first ``sinks`` tokens (the "attention sinks" that absorb
the attention mass softmax must put somewhere) and the ``budget - sinks`` most
recent tokens; everything in between is evicted. No scores are needed.
"""
from __future__ import annotations

from .policy import Policy


class StreamingLLM(Policy):
    chunked = "exact"  # sinks and the newest tokens: decided by position alone

    def __init__(self, budget, *, sinks: int = 4, when: str = "both", slack: int = 0):
        super().__init__(budget, when=when, slack=slack)
        if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
            raise ValueError(f"sinks must be an int >= 0, got {sinks!r}")
        self.sinks = sinks

    def budget(self, layer: int, prompt: int) -> int:
        keep = super().budget(layer, prompt)
        if keep <= self.sinks:
            raise ValueError(f"budget {keep} tokens must exceed sinks={self.sinks} (room for a recent window)")
        return keep

    def rank(self, store, keep):
        pos = store.pos.double()
        return pos.masked_fill(store.pos < self.sinks, float("inf"))
