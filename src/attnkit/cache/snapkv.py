"""SnapKV: the end of the prompt votes for the prompt keys generation will need.

Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation" (2024).
At prefill, the last ``window`` prompt queries (the observation window) vote:
each prefix key gets ``sum_i softmax(q_i K^T / sqrt(d))_j`` over the window's
queries; the votes are smoothed by 1-D average pooling (``kernel`` wide, zero
padded, stride 1, as the authors' code) so a chosen key brings its
neighbours; the ``budget - window`` best prefix keys and the window's own keys
are kept. Decoded tokens are appended and never evicted (``when="prefill"``).
GQA-aware: a kv head keeps one set, voted by the sum of its query heads' votes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .policy import Policy, newest
from .scores import per_kv_head, query_positions, weights


class SnapKV(Policy):
    needs_scores = True
    chunked = "approximate"  # each chunk's last window votes over the tokens kept so far

    def __init__(self, budget, *, window: int = 32, kernel: int = 5, when: str = "prefill", slack: int = 0):
        super().__init__(budget, when=when, slack=slack)
        for name, value in (("window", window), ("kernel", kernel)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (the pooled votes keep their length), got {kernel}")
        self.window, self.kernel = window, kernel

    def budget(self, layer: int, prompt: int) -> int:
        keep = super().budget(layer, prompt)
        if keep <= self.window:
            raise ValueError(f"budget {keep} tokens must exceed window={self.window} (the window's keys are part of it)")
        return keep

    def observe(self, store, q, scale):
        if store.length > store.prompt:
            return store.score
        w = min(self.window, q.shape[2])
        votes = weights(q[:, :, -w:], query_positions(store, w, q.device), store, scale).sum(dim=2)
        votes = per_kv_head(votes, store.k.shape[1])
        B, Hkv, L = votes.shape
        prefix = L - w
        pooled = F.avg_pool1d(votes[..., :prefix].reshape(B * Hkv, 1, prefix), self.kernel, stride=1,
                              padding=self.kernel // 2).view(B, Hkv, prefix)
        return torch.cat([pooled, votes[..., prefix:]], dim=-1)

    def rank(self, store, keep):
        return store.score.masked_fill(newest(store, self.window), float("inf"))
