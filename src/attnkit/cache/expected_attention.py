"""Expected Attention: score keys by the attention future queries are expected to give them.

Devoto et al., "Expected Attention: KV Cache Compression by Estimating
Attention from Future Queries Distribution" (2025). The prompt's queries
(before RoPE, leaving out the first ``sinks``) give a mean ``mu`` and covariance
``Sigma`` per head; future queries sit at the next ``future`` positions, so the
statistics are rotated by the average RoPE rotation over those positions,
``R = mean_t R_t``: ``mu_f = R mu``, ``Sigma_f = R Sigma R^T``. For a Gaussian
query, ``E[exp(q.k / sqrt(d))] = exp(mu_f.k / sqrt(d) + k^T Sigma_f k / (2d))``;
normalised over the keys (a softmax of that exponent), averaged over a kv
head's query heads and scaled by ``||v||``, this is the score. The ``sinks``
first tokens are always kept; the rest keep the highest scores (at prefill).

**In chunks** (``KVState(policy, prompt=N)``, :func:`attnkit.cache.chunked.prefill`)
the layer carries running sums of the pre-RoPE queries seen so far (count,
sum, sum of outer products: :class:`QueryStatistics`), so after each chunk
the mean and covariance are exact for the processed part of the prompt, and
after the last chunk they are the whole prompt's; each chunk's eviction
scores the tokens kept so far with them, rotated to the positions after the
chunk. The approximation: a token evicted at an earlier chunk was scored
with the statistics of part of the prompt and does not come back, and the
last chunk ranks only the tokens still kept. When the prompt fits one chunk
the choice is the one-call choice. (kvpress, applying its
``ExpectedAttentionPress`` again during decoding through ``DecodingPress``,
estimates the statistics from the queries since the last compression only;
the running sums keep every query seen, which is what the paper's estimate
over the prompt becomes when the prompt arrives in pieces.)

``rotate(x, positions)`` applies the model's RoPE to ``x (..., n, D)`` at
``positions (n,)``: ``RoPE.rotate`` of :mod:`attnkit.positional`, or
:func:`attnkit.cache.hf.rotation` for a transformers model.
"""
from __future__ import annotations

import torch

from .policy import Policy, prefill_room
from .scores import query_positions


class QueryStatistics:
    """Running sums of the pre-RoPE queries seen so far (float64, a value): count, sum ``(B, H, D)`` and sum of
    outer products ``(B, H, D, D)``; their mean and covariance are exact for every query added."""

    def __init__(self, count: int, total: torch.Tensor, outer: torch.Tensor):
        self.count, self.total, self.outer = count, total, outer

    @staticmethod
    def of(pre: torch.Tensor) -> "QueryStatistics":
        return QueryStatistics(pre.shape[2], pre.sum(dim=2), pre.transpose(-1, -2) @ pre)

    def add(self, pre: torch.Tensor) -> "QueryStatistics":
        more = QueryStatistics.of(pre)
        return QueryStatistics(self.count + more.count, self.total + more.total, self.outer + more.outer)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``(B, H, D)`` and covariance ``(B, H, D, D)`` (normalised by the count, as the paper's estimate)."""
        mu = self.total / self.count
        return mu, self.outer / self.count - mu[..., :, None] * mu[..., None, :]


class ExpectedAttention(Policy):
    needs_scores = True
    chunked = "approximate"  # each chunk evicts with the statistics of the queries seen so far (see above)

    def __init__(self, budget, *, rotate, future: int = 512, sinks: int = 4, covariance: bool = True):
        super().__init__(budget, when="prefill")
        if not callable(rotate):
            raise TypeError("rotate must be the model's RoPE as a callable rotate(x, positions), e.g. RoPE(d).rotate")
        for name, value in (("future", future), ("sinks", sinks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "future" else 0):
                raise ValueError(f"{name} must be an int >= {1 if name == 'future' else 0}, got {value!r}")
        self.rotate, self.future, self.sinks, self.covariance = rotate, future, sinks, covariance

    def pre_rope(self, q: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The queries ``q (B, H, n, D)`` at ``positions (n,)`` before RoPE (float64), the first ``sinks`` left out."""
        pre = self.rotate(q.to(torch.float64), -positions)  # undo RoPE: R_p^T = R_{-p}
        return pre[:, :, positions >= self.sinks]

    def statistics(self, q: torch.Tensor, positions: torch.Tensor, length: int):
        """Mean ``(B, H, D)`` and covariance ``(B, H, D, D)`` of the future queries (float64) estimated from the
        queries ``q (B, H, n, D)`` at ``positions (n,)``, the next ``future`` positions after ``length``."""
        return self.future_moments(self.running(q, positions, None), length)

    def future_moments(self, stats: "QueryStatistics | None", length: int):
        """The statistics' mean and covariance rotated by the mean RoPE rotation of positions ``length ..
        length + future - 1`` (``Sigma_f`` is ``None`` without ``covariance``)."""
        if stats is None:
            raise ValueError(f"ExpectedAttention needs prompt queries after the {self.sinks} sinks")
        mu, sigma = stats.moments()
        D = mu.shape[-1]
        eye = torch.eye(D, dtype=torch.float64, device=mu.device).expand(self.future, D, D).transpose(0, 1)
        ahead = torch.arange(length, length + self.future, device=mu.device)
        R = self.rotate(eye, ahead).mean(dim=1).transpose(0, 1)  # column j: mean_t R_t e_j
        return mu @ R.T, (R @ sigma @ R.T if self.covariance else None)

    def running(self, q, positions, seen: QueryStatistics | None) -> QueryStatistics | None:
        """``seen`` with the queries ``q`` at ``positions`` added (``None`` while no query after the sinks came)."""
        pre = self.pre_rope(q, positions)
        if pre.shape[2] == 0:
            return seen
        return QueryStatistics.of(pre) if seen is None else seen.add(pre)

    def observe(self, store, q, scale):
        """Each kept token's score, from the statistics of every prompt query up to this call (a whole prompt, or
        the running statistics a chunked prefill carries in ``store.score``)."""
        if store.length > store.prompt:
            return store.score
        seen = store.score if isinstance(store.score, QueryStatistics) else None
        return self.scores(store, *self.future_moments(self.running(q, self._positions(store, q), seen), store.length))

    def scores(self, store, mu, sigma):
        B, H, D = mu.shape
        kv_heads = store.k.shape[1]
        k = store.k.to(torch.float64).repeat_interleave(H // kv_heads, dim=1)  # (B, H, L, D)
        z = (k @ mu[..., None]).squeeze(-1) / D**0.5
        if sigma is not None:
            z = z + ((k @ sigma) * k).sum(-1) / (2 * D)
        expected = torch.softmax(z, dim=-1).view(B, kv_heads, H // kv_heads, -1).mean(dim=2)
        return expected * store.v.to(torch.float64).norm(dim=-1)

    @staticmethod
    def _positions(store, q):
        return query_positions(store, q.shape[2], q.device).long()

    def select(self, store, q, scale, layer):
        """Like every policy at prefill (keep the sinks and the highest scores), but what the layer carries to the
        next prompt chunk is the running query statistics (``store.score``), not per-token scores."""
        if store.length > store.prompt:
            return store, None
        seen = store.score if isinstance(store.score, QueryStatistics) else None
        stats = self.running(q, self._positions(store, q), seen)
        keep = self.prompt_budget(layer, store.prompt)
        if store.used <= keep:
            return store.with_score(stats), None
        ranked = self.rank(store.with_score(self.scores(store, *self.future_moments(stats, store.length))), keep)
        index = ranked.topk(keep, dim=-1).indices.sort(dim=-1).values
        return store.with_score(stats), (index, stats, prefill_room(store, keep))

    def rank(self, store, keep):
        return store.score.masked_fill(store.pos < self.sinks, float("inf"))
