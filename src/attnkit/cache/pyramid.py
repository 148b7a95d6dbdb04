"""PyramidKV: per-layer budgets that decrease with depth, around any scorer.

Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal
Information Funneling" (2024). Lower layers spread attention widely, upper
layers concentrate it, so with an average budget ``k`` over ``L`` layers
layer ``l`` keeps ``k_l = k_max - (k_max - k_min) l / (L - 1)`` tokens, with
``k_min = k / beta`` and ``k_max = 2k - k_min`` (an arithmetic sequence whose
mean is ``k``; a layer whose share exceeds the prompt keeps all of it, so at
budgets above about half the prompt the mean falls below ``k``). The tokens a layer keeps are chosen by the wrapped policy (the
paper uses SnapKV's observation-window votes).
"""
from __future__ import annotations

from .policy import Policy


class PyramidKV(Policy):
    def __init__(self, scorer: Policy, *, layers: int, beta: float = 20.0):
        if not isinstance(scorer, Policy):
            raise TypeError(f"scorer must be an attnkit.cache policy, got {type(scorer).__name__}")
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers must be the model's number of layers (an int >= 1), got {layers!r}")
        if not beta >= 1:
            raise ValueError(f"beta must be >= 1 (k_min = budget / beta), got {beta}")
        super().__init__(scorer.budget_value, when=scorer.when, slack=scorer.slack)
        self.scorer, self.layers, self.beta = scorer, layers, beta
        self.needs_scores, self.chunked = scorer.needs_scores, scorer.chunked
        self.uneven_layers = True

    def __repr__(self) -> str:
        return f"PyramidKV({self.scorer!r}, layers={self.layers}, beta={self.beta})"

    def budget(self, layer: int, prompt: int) -> int:
        if not 0 <= layer < self.layers:
            raise ValueError(f"layer {layer} is outside the {self.layers} layers PyramidKV was built for")
        mean = self.scorer.budget(layer, prompt)
        low = mean / self.beta
        high = 2 * mean - low
        step = 0.0 if self.layers == 1 else (high - low) / (self.layers - 1)
        return min(prompt, max(1, round(high - step * layer)))

    def observe(self, store, q, scale):
        return self.scorer.observe(store, q, scale)

    def rank(self, store, keep):
        return self.scorer.rank(store, keep)
