"""Logarithmic scaling of the scores past the training length (SWAN-GPT's dynamic attention scaling).

Puvvada et al., "SWAN-GPT: An Efficient and Scalable Approach for Long-Context Language Modeling"
(2025) scale the attention scores of their NoPE layers at inference so that a query far past the
training length keeps a softmax as sharp as it had in training. The abstract says only "dynamic
scaling of attention scores"; attnkit uses the logarithmic form those scalings share: query ``i``
at position ``p_i`` (from 0) is multiplied by

    s_i = max(1, log(p_i + 1) / log(L))

with ``L`` the training length, so scores are unchanged within it and grow like ``log p`` past it.
Multiplying the query scales every score of that query, whatever the mechanism. ``inner`` (e.g.
a RoPE) is applied first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LogScaling:
    train_length: int
    inner: object | None = None

    def __post_init__(self):
        if isinstance(self.train_length, bool) or not isinstance(self.train_length, int) or self.train_length < 2:
            raise ValueError(f"train_length must be an int >= 2, got {self.train_length!r}")
        if self.inner is not None and not all(callable(getattr(self.inner, m, None)) for m in ("apply", "apply_keys")):
            raise TypeError(f"inner must be None or a positional encoding with apply() and apply_keys(), "
                            f"got {type(self.inner).__name__}")

    def factors(self, q_offset: int, n: int, like: torch.Tensor) -> torch.Tensor:
        """``s_i`` for the ``n`` positions from ``q_offset``, ``(n, 1)`` in ``like``'s dtype and device."""
        positions = torch.arange(q_offset + 1, q_offset + n + 1, device=like.device, dtype=like.dtype)
        return (positions.log() / math.log(self.train_length)).clamp_min(1.0)[:, None]

    def apply(self, q, k, *, q_offset: int, k_offset: int):
        if self.inner is not None:
            q, k = self.inner.apply(q, k, q_offset=q_offset, k_offset=k_offset)
        return q * self.factors(q_offset, q.shape[2], q), k

    def apply_keys(self, k, *, k_offset: int):
        """The keys of :meth:`apply` alone: the inner encoding's (the scaling acts on queries only)."""
        return k if self.inner is None else self.inner.apply_keys(k, k_offset=k_offset)
