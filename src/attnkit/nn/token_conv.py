"""Depthwise convolution over the tokens of a sequence (or of a 2-D grid), with a decoding state.

The short convolutions of linear-attention blocks: FLatten's and Agent attention's
rank-restoring depthwise convolution on V (2-D over an image grid in those vision
papers; 1-D over the sequence here when no grid is given) and Mamba-2's causal
conv1d on ``x, B, C``. ``forward(x, causal=, state=)`` takes tokens ``(B, N, C)``:

- causal: output ``t`` sees inputs ``t - kernel_size + 1 .. t``; the state is the
  last ``kernel_size - 1`` inputs ``(B, C, kernel_size - 1)``, so running a
  sequence in pieces (decoding) equals running it at once;
- non-causal: "same" padding centred on each token (odd ``kernel_size``), no state;
- ``grid=(h, w)``: tokens are a row-major ``h x w`` image, a ``k x k`` depthwise
  ``Conv2d`` with "same" padding (non-causal only).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_int


class TokenConv(nn.Module):
    def __init__(self, channels: int, kernel_size: int, grid: tuple[int, int] | None = None):
        super().__init__()
        check_int("channels", channels)
        check_int("kernel_size", kernel_size)
        if grid is not None:
            if not (isinstance(grid, tuple) and len(grid) == 2):
                raise TypeError(f"grid must be None or a tuple (height, width), got {grid!r}")
            for name, side in zip(("grid height", "grid width"), grid):
                check_int(name, side)
        self.channels, self.kernel_size, self.grid = channels, kernel_size, grid
        shape = (channels, 1, kernel_size) if grid is None else (channels, 1, kernel_size, kernel_size)
        fan_in = kernel_size if grid is None else kernel_size**2
        self.weight = nn.Parameter(torch.empty(shape).uniform_(-(fan_in**-0.5), fan_in**-0.5))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, *, causal: bool, state: torch.Tensor | None = None):
        """``x (B, N, C)`` -> ``(y (B, N, C), state)``; ``state`` is None unless causal."""
        B, N, C = x.shape
        if C != self.channels:
            raise ValueError(f"x has {C} channels; this convolution expects {self.channels}")
        if self.grid is not None:
            if causal:
                raise ValueError("a 2-D grid convolution is not causal; pass grid=None for causal sequences")
            h, w = self.grid
            if N != h * w:
                raise ValueError(f"x has {N} tokens; the grid {h}x{w} needs {h * w}")
            img = x.transpose(1, 2).reshape(B, C, h, w)
            y = F.conv2d(img, self.weight, self.bias, padding=self.kernel_size // 2, groups=C)
            return y.flatten(2).transpose(1, 2), None
        xt = x.transpose(1, 2)  # (B, C, N)
        if not causal:
            if state is not None:
                raise ValueError("state is only used by the causal convolution (decoding)")
            if self.kernel_size % 2 == 0:
                raise ValueError(f"a non-causal 'same' convolution needs an odd kernel_size, got {self.kernel_size}")
            y = F.conv1d(xt, self.weight, self.bias, padding=self.kernel_size // 2, groups=C)
            return y.transpose(1, 2), None
        keep = self.kernel_size - 1
        if state is None:
            state = xt.new_zeros(B, C, keep)
        elif not isinstance(state, torch.Tensor) or tuple(state.shape) != (B, C, keep):
            raise ValueError(f"state must be the conv state (batch, channels, kernel_size - 1) = {(B, C, keep)}")
        padded = torch.cat([state.to(xt.dtype), xt], dim=2)
        y = F.conv1d(padded, self.weight, self.bias, groups=C)
        return y.transpose(1, 2), padded[:, :, padded.shape[2] - keep :]
