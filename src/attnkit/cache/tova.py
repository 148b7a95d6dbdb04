"""TOVA: Token Omission Via Attention.

Oren et al., "Transformers are Multi-State RNNs" (2024). After each query the
cache drops the tokens with the lowest attention weight *of that query*,
averaged over the layer's heads, keeping ``budget`` tokens (all heads keep the
same ones). At prefill the prompt's last query decides.
"""
from __future__ import annotations

from .policy import Policy
from .scores import query_positions, weights


class TOVA(Policy):
    needs_scores = True
    chunked = "approximate"  # each chunk's last query decides, as each decoded one does

    def observe(self, store, q, scale):
        last = weights(q[:, :, -1:], query_positions(store, 1, q.device), store, scale)[:, :, 0]
        return last.mean(dim=1, keepdim=True).expand(-1, store.k.shape[1], -1)

    def rank(self, store, keep):
        return store.score
