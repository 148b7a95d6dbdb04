"""Randomized positional encodings: each sequence reads its positions as a sorted random subset of a
much longer range.

Ruoss et al., "Randomized Positional Encodings Boost Length Generalization of Transformers" (ACL
2023): for a sequence of ``N`` tokens, draw ``N`` distinct positions uniformly from ``0 .. L - 1``
(``L`` = ``max_length``, far beyond the training lengths), sort them, and give token ``i`` the
``i``-th of them in place of ``i``. Training then sees every position up to ``L``, so a longer test
sequence stays in distribution; only the order of the tokens is kept. As in the authors' code, the
positions are drawn afresh at every call, at test time too, and queries and keys share one draw.
The inner encoding here is a :class:`~attnkit.positional.RoPE` (the paper's randomized
relative/rotary/ALiBi/learned variants differ only in what reads the positions).

One call must see the whole sequence (the paper's tasks): an incremental call would draw new
positions for the tokens already cached, so this encoding is not for decoding.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .rope import RoPE


@dataclass(frozen=True)
class RandomizedPositions:
    rope: RoPE
    max_length: int
    generator: torch.Generator | None = field(default=None, compare=False)

    def __post_init__(self):
        if not isinstance(self.rope, RoPE):
            raise TypeError(f"rope must be an attnkit.positional.RoPE, got {type(self.rope).__name__}")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 1:
            raise ValueError(f"max_length must be an int >= 1, got {self.max_length!r}")

    def draw(self, n: int, device) -> torch.Tensor:
        """``n`` sorted distinct positions from ``0 .. max_length - 1``."""
        if n > self.max_length:
            raise ValueError(f"a sequence of {n} tokens needs max_length >= {n}, got {self.max_length}")
        pick = torch.randperm(self.max_length, generator=self.generator, device=device)[:n]
        return pick.sort().values

    def apply(self, q, k, *, q_offset: int, k_offset: int):
        n = max(q_offset + q.shape[2], k_offset + k.shape[2])
        positions = self.draw(n, q.device)
        return (self.rope.rotate(q, positions[q_offset:q_offset + q.shape[2]]),
                self.rope.rotate(k, positions[k_offset:k_offset + k.shape[2]]))

    def apply_keys(self, k, *, k_offset: int):
        """The keys of :meth:`apply` alone (with no queries): a draw of ``k_offset + N`` positions, ``k`` rotated
        to its last ``N``. A fresh draw, as every call's: not the positions an earlier :meth:`apply` gave."""
        return self.rope.rotate(k, self.draw(k_offset + k.shape[2], k.device)[k_offset:])
