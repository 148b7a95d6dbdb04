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

``rotate(x, positions)`` applies the model's RoPE to ``x (..., n, D)`` at
``positions (n,)``: ``RoPE.rotate`` of :mod:`attnkit.positional`, or
:func:`attnkit.cache.hf.rotation` for a transformers model.
"""
from __future__ import annotations

import torch

from .policy import Policy
from .scores import query_positions


class ExpectedAttention(Policy):
    needs_scores = True

    def __init__(self, budget, *, rotate, future: int = 512, sinks: int = 4, covariance: bool = True):
        super().__init__(budget, when="prefill")
        if not callable(rotate):
            raise TypeError("rotate must be the model's RoPE as a callable rotate(x, positions), e.g. RoPE(d).rotate")
        for name, value in (("future", future), ("sinks", sinks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "future" else 0):
                raise ValueError(f"{name} must be an int >= {1 if name == 'future' else 0}, got {value!r}")
        self.rotate, self.future, self.sinks, self.covariance = rotate, future, sinks, covariance

    def statistics(self, q: torch.Tensor, positions: torch.Tensor, length: int):
        """Mean ``(B, H, D)`` and covariance ``(B, H, D, D)`` of the future queries (float64)."""
        pre = self.rotate(q.to(torch.float64), -positions)[:, :, self.sinks:]  # undo RoPE: R_p^T = R_{-p}
        if pre.shape[2] == 0:
            raise ValueError(f"ExpectedAttention needs prompt queries after the {self.sinks} sinks")
        mu = pre.mean(dim=2)
        D = q.shape[-1]
        eye = torch.eye(D, dtype=torch.float64, device=q.device).expand(self.future, D, D).transpose(0, 1)
        ahead = torch.arange(length, length + self.future, device=q.device)
        R = self.rotate(eye, ahead).mean(dim=1).transpose(0, 1)  # column j: mean_t R_t e_j
        mu_f = mu @ R.T
        if not self.covariance:
            return mu_f, None
        centred = pre - mu[:, :, None]
        sigma = centred.transpose(-1, -2) @ centred / pre.shape[2]
        return mu_f, R @ sigma @ R.T

    def observe(self, store, q, scale):
        if store.length != store.prompt:
            return store.score
        mu, sigma = self.statistics(q, query_positions(store, q.shape[2], q.device).long(), store.length)
        B, H, D = mu.shape
        kv_heads = store.k.shape[1]
        k = store.k.to(torch.float64).repeat_interleave(H // kv_heads, dim=1)  # (B, H, L, D)
        z = (k @ mu[..., None]).squeeze(-1) / D**0.5
        if sigma is not None:
            z = z + ((k @ sigma) * k).sum(-1) / (2 * D)
        expected = torch.softmax(z, dim=-1).view(B, kv_heads, H // kv_heads, -1).mean(dim=2)
        return expected * store.v.to(torch.float64).norm(dim=-1)

    def rank(self, store, keep):
        return store.score.masked_fill(store.pos < self.sinks, float("inf"))
