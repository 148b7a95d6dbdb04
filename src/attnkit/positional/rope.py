"""Rotary position embedding and its context-extension scalings.

- RoPE: Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding" (2021).
- ``scaling="linear"``: position interpolation, Chen et al., "Extending Context Window
  of Large Language Models via Positional Interpolation" (2023): positions / factor.
- ``scaling="ntk"``: NTK-aware scaling (bloc97, 2023): base * factor^(d / (d - 2)).
- ``scaling="yarn"``: Peng et al., "YaRN: Efficient Context Window Extension of Large
  Language Models" (2023): per-frequency ramp between interpolation and extrapolation
  by wavelength, plus the attention temperature ``sqrt(1/t) = 0.1 ln(s) + 1``.
- NoPE: no positional encoding (Kazemnejad et al., "The Impact of Positional Encoding
  on Length Generalization in Transformers", 2023).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RoPE:
    head_dim: int
    base: float = 10000.0
    scaling: str | None = None  # None | "linear" | "ntk" | "yarn"
    factor: float = 1.0
    original_context: int = 2048  # YaRN: the pretrained context length
    beta_fast: float = 32.0  # YaRN: rotations above which a dimension is left unscaled
    beta_slow: float = 1.0  # YaRN: rotations below which a dimension is fully interpolated

    def __post_init__(self):
        if self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
        if self.scaling not in (None, "linear", "ntk", "yarn"):
            raise ValueError(f"scaling must be None, 'linear', 'ntk' or 'yarn', got {self.scaling!r}")
        if self.factor < 1.0:
            raise ValueError(f"factor must be >= 1, got {self.factor}")

    def inv_freq(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The rotation frequency of each pair of dimensions, float64, made on ``device``."""
        d = self.head_dim
        base = self.base
        if self.scaling == "ntk":
            base = base * self.factor ** (d / (d - 2))
        inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)
        if self.scaling == "linear":
            inv = inv / self.factor
        elif self.scaling == "yarn":
            # Number of full rotations each dimension makes over the original context.
            rotations = self.original_context * inv / (2 * math.pi)
            ramp = ((rotations - self.beta_slow) / (self.beta_fast - self.beta_slow)).clamp(0, 1)
            inv = inv / self.factor * (1 - ramp) + inv * ramp
        return inv

    def temperature(self) -> float:
        """YaRN multiplies q and k each by ``0.1 ln(s) + 1`` (so logits by its square)."""
        if self.scaling == "yarn" and self.factor > 1:
            return 0.1 * math.log(self.factor) + 1.0
        return 1.0

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate pairs ``(x[2i], x[2i+1])`` by angle ``pos * inv_freq[i]``."""
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"RoPE was built for head_dim {self.head_dim}, got tensors with head_dim {x.shape[-1]}")
        angles = positions.to(torch.float64)[:, None] * self.inv_freq(positions.device)[None, :]
        cos = angles.cos().to(x.dtype) * self.temperature()
        sin = angles.sin().to(x.dtype) * self.temperature()
        if x.dtype in COMPLEX_OF:
            # the pair (x[2i], x[2i+1]) as one complex number times cos + i sin: the same products and sums,
            # one pass over x instead of a pass per product on strided halves
            pairs = torch.view_as_complex(_complex_ready(x).unflatten(-1, (-1, 2)))
            return torch.view_as_real(pairs * torch.complex(cos, sin)).flatten(-2)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return out.flatten(-2)

    def apply(self, q, k, *, q_offset: int, k_offset: int):
        qp = torch.arange(q_offset, q_offset + q.shape[2], device=q.device)
        return self.rotate(q, qp), self.apply_keys(k, k_offset=k_offset)

    def apply_keys(self, k, *, k_offset: int):
        """The keys of :meth:`apply` alone: ``k`` rotated to positions ``k_offset, k_offset + 1, ...``."""
        return self.rotate(k, torch.arange(k_offset, k_offset + k.shape[2], device=k.device))


COMPLEX_OF = (torch.float32, torch.float64)  # real dtypes whose complex dtype has the elementwise ops on every device


def _complex_ready(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself if its pairs of last-axis entries can be viewed as complex numbers (last stride 1, the
    other strides and the offset even), else a contiguous copy."""
    even = x.storage_offset() % 2 == 0 and all(s % 2 == 0 for s, n in zip(x.stride()[:-1], x.shape[:-1]) if n > 1)
    return x if x.stride(-1) == 1 and even else x.contiguous()


@dataclass(frozen=True)
class NoPE:
    """No positional encoding: q and k pass through unchanged."""

    def apply(self, q, k, *, q_offset: int, k_offset: int):
        return q, k

    def apply_keys(self, k, *, k_offset: int):
        return k
