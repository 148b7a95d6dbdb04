"""ELA (Xu, Wan; "ELA: Efficient Local Attention for Deep Convolutional Neural Networks").

Strip pooling along each axis, a 1-D depthwise convolution and group
normalisation shared by both directions, sigmoid, no channel reduction:

    z_h = mean_W(x)   (B, C, H)         z_w = mean_H(x)   (B, C, W)
    y_h = sigmoid(GN(Conv1d_k(z_h)))    y_w = sigmoid(GN(Conv1d_k(z_w)))
    out = x * y_h[..., None] * y_w[..., None, :]

Parameters: C k (bias-free depthwise kernel) + 2 C (group-norm affine).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...validation import check_divides, check_feature_map, check_int
from ..factory import factory_kwargs


@factory_kwargs
class EfficientLocalAttention(nn.Module):
    paper = "ELA: Efficient Local Attention for Deep Convolutional Neural Networks"

    def __init__(self, channels: int, kernel_size: int = 7, groups: int = 16):
        super().__init__()
        self.channels = check_int("channels", channels)
        check_int("kernel_size", kernel_size)
        check_int("groups", groups)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        check_divides("channels", channels, "groups", groups)
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False)
        self.gn = nn.GroupNorm(groups, channels)

    def _gate(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gn(self.conv(z)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels)
        y_h = self._gate(x.mean(dim=3))
        y_w = self._gate(x.mean(dim=2))
        return x * y_h[:, :, :, None] * y_w[:, :, None, :]
