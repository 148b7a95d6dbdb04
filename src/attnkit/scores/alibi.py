"""ALiBi: attention with linear biases.

Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases
Enables Input Length Extrapolation" (2022). Each head adds ``-m_h * distance``
to its scores, with head slopes ``m_h`` a geometric sequence.
"""
from __future__ import annotations

import math

import torch


def alibi_slopes(heads: int, device=None) -> torch.Tensor:
    """The paper's slopes: ``2^(-8 h / n)`` for n heads a power of two; otherwise
    the slopes of the closest smaller power of two followed by every other slope
    of the next power of two (as in the paper's reference code's description)."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if heads & (heads - 1) == 0:
        return torch.tensor(power_of_two(heads), dtype=torch.float64, device=device)
    closest = 2 ** math.floor(math.log2(heads))
    extra = power_of_two(2 * closest)[0::2][: heads - closest]
    return torch.tensor(power_of_two(closest) + extra, dtype=torch.float64, device=device)


def alibi_mod(slopes: torch.Tensor | None = None):
    """Score modifier: ``s - m_h * |q_pos - k_pos|`` (for causal pairs this is ``m_h * (k - q)``)."""

    def mod(scores, q_pos, k_pos):
        m = slopes if slopes is not None else alibi_slopes(scores.shape[1], scores.device)
        m = m.to(device=scores.device, dtype=scores.dtype)[:, None, None]
        distance = (q_pos[:, None] - k_pos[None, :]).abs().to(scores.dtype)
        return scores - m * distance

    return mod
