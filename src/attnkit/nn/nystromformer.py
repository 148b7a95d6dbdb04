"""Nyströmformer's attention block: landmark attention plus the skip convolution on V.

Xiong et al., "Nyströmformer: A Nyström-Based Algorithm for Approximating
Self-Attention" (2021). The block projects tokens to heads, runs the
``nystromformer`` mechanism (segment-mean landmarks, iterative pseudo-inverse)
and adds the paper's skip connection: a depthwise convolution of V along the
sequence, one ``conv_kernel x 1`` filter per head shared by the head's features
(33 in the paper, no bias), before the output projection::

    out = (NystromAttention(Q, K, V) + DConv(V)) W_O

Non-causal (landmarks are means over the whole sequence). ``conv_kernel=None``
drops the skip convolution.
"""
from __future__ import annotations

import torch
from torch import nn

from ..api import attention
from ..validation import check_int, check_tokens
from .factory import factory_kwargs


@factory_kwargs
class NystromAttention(nn.Module):
    """Nyströmformer's attention block: landmark attention plus the skip convolution on V;
    ``(B, N, dim) -> (B, N, dim)``. See the module docstring. No ``dropout=``: the Nyström
    approximation never forms the ``N x N`` weights (it multiplies its three landmark kernels and the
    pseudo-inverse right to left), so there are no attention weights to drop.
    """

    paper = "Nyströmformer: A Nyström-Based Algorithm for Approximating Self-Attention"

    def __init__(self, dim: int, heads: int, *, landmarks: int = 64, iterations: int = 6,
                 conv_kernel: int | None = 33, qkv_bias: bool = False):
        super().__init__()
        check_int("dim", dim)
        check_int("heads", heads)
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        if conv_kernel is not None:
            check_int("conv_kernel", conv_kernel)
            if conv_kernel % 2 == 0:
                raise ValueError(f"conv_kernel must be odd (a centred skip convolution), got {conv_kernel}")
        self.dim, self.heads = dim, heads
        self.params = {"landmarks": landmarks, "iterations": iterations}
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.conv = None
        if conv_kernel is not None:
            self.conv = nn.Conv2d(heads, heads, (conv_kernel, 1), padding=(conv_kernel // 2, 0), groups=heads,
                                  bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, N, dim)`` -> ``(B, N, dim)``."""
        check_tokens("x", x, self.dim)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        out = attention(q, k, v, "nystromformer", causal=False, **self.params)
        if self.conv is not None:
            out = out + self.conv(v)  # v (B, H, N, d) as an image: H channels, N x d pixels
        return self.proj(out.transpose(1, 2).flatten(2))
