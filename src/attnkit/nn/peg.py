"""CPVT's positional encoding generator (PEG), from Chu et al., "Conditional Positional Encodings
for Vision Transformers" (2023), section 3.

The positional encoding is computed from the tokens' local neighbourhood instead of being a
table: the patch tokens are laid back on their ``H x W`` grid, a depthwise ``k x k`` convolution
with zero padding ``k // 2`` (the zeros at the border are what tells a token where it is) gives
the encoding, and it is added to the tokens (``F`` in eq. 1):

    x'_p = x_p + sum_{|o| <= k // 2} W_o * x_{p + o} + b          (per channel)

so it works at any input resolution and, away from the borders, moves with the content
(translation equivariance). A class token, if any, passes through unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from ..validation import check_int, check_tokens
from .factory import factory_kwargs


@factory_kwargs
class PositionalEncodingGenerator(nn.Module):
    """``forward(x, grid=(H, W), class_tokens=0) -> x + PEG(x)`` for tokens ``x (B, class_tokens + H W, dim)``.

    No ``dropout=``: a depthwise convolution, no attention weights.
    """

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        check_int("dim", dim)
        check_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (a window centred on each patch), got {kernel_size}")
        self.dim = dim
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x, grid, class_tokens: int = 0):
        check_tokens("x", x, self.dim)
        check_int("class_tokens", class_tokens, minimum=0)
        rows, cols = grid
        if rows * cols + class_tokens != x.shape[1]:
            raise ValueError(f"x has {x.shape[1]} tokens; grid {grid!r} and class_tokens={class_tokens} "
                             f"need {rows * cols + class_tokens}")
        head, patches = x[:, :class_tokens], x[:, class_tokens:]
        image = patches.transpose(1, 2).reshape(x.shape[0], self.dim, rows, cols)
        encoded = image + self.conv(image)
        return torch.cat([head, encoded.flatten(2).transpose(1, 2)], dim=1)
