"""H2O: heavy hitters (accumulated attention) + a recent window.

Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of
Large Language Models" (2023). Every kept token accumulates the attention
weights it receives, ``score_j = sum_i softmax(q_i K^T / sqrt(d))_j`` over the
queries ``i`` since it entered; the cache keeps the ``recent`` newest tokens
and, among the others, the ``budget - recent`` with the highest score (the
greedy Algorithm 1 with its recent window; one token evicted per decoded
token). GQA: a kv head's score sums the weights of the query heads it serves.
"""
from __future__ import annotations

from .policy import Policy, newest, padded_score
from .scores import column_sums, per_kv_head


class H2O(Policy):
    needs_scores = True
    chunked = "approximate"  # a chunk's queries see only the tokens kept so far

    def __init__(self, budget, *, recent: int | float = 0.5, when: str = "both", slack: int = 0):
        super().__init__(budget, when=when, slack=slack)
        if isinstance(recent, bool) or not isinstance(recent, (int, float)) or recent < 0 or (
                isinstance(recent, float) and recent > 1):
            raise ValueError(f"recent must be an int >= 0 (tokens) or a float in [0, 1] (a share of the budget), got {recent!r}")
        self.recent = recent

    def recent_tokens(self, keep: int) -> int:
        return self.recent if isinstance(self.recent, int) else int(self.recent * keep)

    def observe(self, store, q, scale):
        return padded_score(store) + per_kv_head(column_sums(q, store, scale), store.k.shape[1])

    def rank(self, store, keep):
        return store.score.masked_fill(newest(store, self.recent_tokens(keep)), float("inf"))
