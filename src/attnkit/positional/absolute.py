"""Absolute position embeddings, added to token embeddings before attention.

- Sinusoidal: Vaswani et al., "Attention Is All You Need" (2017), Section 3.5:
  ``PE[pos, 2i] = sin(pos / base^(2i/d))``, ``PE[pos, 2i+1] = cos(pos / base^(2i/d))``.
- Learned: one trained vector per position (as in GPT-2/BERT), a table of
  ``max_positions`` rows.

Both take an ``offset`` so incremental decoding continues the positions.
"""
from __future__ import annotations

import torch
from torch import nn
from ..validation import check_int


def sinusoidal_embedding(positions: torch.Tensor, dim: int, *, base: float = 10000.0, dtype=torch.float32) -> torch.Tensor:
    """``(len(positions), dim)`` sinusoidal embeddings (dim even), computed in float64 then cast."""
    check_int("dim", dim, minimum=2)
    if dim % 2:
        raise ValueError(f"dim must be an even int >= 2, got {dim!r}")
    if not isinstance(positions, torch.Tensor) or positions.ndim != 1:
        raise ValueError("positions must be a 1-D integer tensor of token positions")
    inv = base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
    angles = positions.to(torch.float64)[:, None] * inv[None, :]
    out = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)
    return out.to(dtype)


class SinusoidalPositionalEmbedding(nn.Module):
    """Adds sinusoidal embeddings to ``x`` of shape ``(batch, seq, dim)``."""

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        sinusoidal_embedding(torch.arange(1), dim)  # validates dim
        self.dim, self.base = dim, base

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        _check_x(x, self.dim)
        positions = torch.arange(offset, offset + x.shape[1], device=x.device)
        return x + sinusoidal_embedding(positions, self.dim, base=self.base, dtype=x.dtype)


class LearnedPositionalEmbedding(nn.Module):
    """Adds a learned vector per position to ``x`` of shape ``(batch, seq, dim)``."""

    def __init__(self, max_positions: int, dim: int):
        super().__init__()
        self.table = nn.Embedding(max_positions, dim)
        nn.init.normal_(self.table.weight, std=0.02)
        self.dim, self.max_positions = dim, max_positions

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        _check_x(x, self.dim)
        end = offset + x.shape[1]
        if offset < 0 or end > self.max_positions:
            raise ValueError(
                f"positions {offset}..{end - 1} are outside the learned table of {self.max_positions} positions"
            )
        positions = torch.arange(offset, end, device=x.device)
        return x + self.table(positions).to(x.dtype)


def _check_x(x, dim):
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != dim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must have shape (batch, seq, {dim}), got {shape}")
