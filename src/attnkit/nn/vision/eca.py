"""ECA (Wang, Wu, Zhu, Li, Zuo, Hu; "ECA-Net: Efficient Channel Attention for Deep
Convolutional Neural Networks").

    s = sigmoid(Conv1D_k(GAP(x)))    a 1-D convolution across channels, no reduction
    out = s * x

The kernel size adapts to the channel count, k = psi(C) = |log2(C)/gamma + b/gamma|_odd
with gamma = 2, b = 1 (:func:`eca_kernel_size`), and the module has exactly k
parameters (the bias-free 1-D kernel).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ...validation import check_feature_map, check_int
from ..factory import factory_kwargs


def eca_kernel_size(channels: int, gamma: float = 2.0, b: float = 1.0) -> int:
    """psi(C): the odd kernel size nearest (rounding as the released code) to log2(C)/gamma + b/gamma."""
    check_int("channels", channels)
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


@factory_kwargs
class ECA(nn.Module):
    paper = "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks"

    def __init__(self, channels: int, kernel_size: int | None = None, gamma: float = 2.0, b: float = 1.0):
        super().__init__()
        self.channels = check_int("channels", channels)
        k = eca_kernel_size(channels, gamma, b) if kernel_size is None else check_int("kernel_size", kernel_size)
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {k}")
        self.kernel_size = k
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels)
        s = self.conv(x.mean(dim=(2, 3))[:, None, :])[:, 0, :]
        return x * torch.sigmoid(s)[:, :, None, None]
