"""Triplet attention (Misra, Nalamada, Arasanipalai, Hou; "Rotate to Attend:
Convolutional Triplet Attention Module").

Three branches, each rotating the tensor so a different pair of dimensions is
"spatial", then Z-pool (concatenate max and mean over the remaining dimension),
a k x k convolution 2 -> 1 with batch norm, a sigmoid, and a multiply:

    branch 1: (C, W) interaction, pooled over H
    branch 2: (H, C) interaction, pooled over W
    branch 3: (H, W) interaction, pooled over C (plain spatial attention)
    out = (y1 + y2 + y3) / 3

Parameters: 3 (2 k^2 + 2) (bias-free convolution + batch-norm affine), 300 for k = 7.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...validation import check_feature_map, check_int
from ..factory import factory_kwargs


class _Gate(nn.Module):
    def __init__(self, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(z)))


@factory_kwargs
class TripletAttention(nn.Module):
    paper = "Rotate to Attend: Convolutional Triplet Attention Module"

    def __init__(self, channels: int, kernel_size: int = 7):
        super().__init__()
        self.channels = check_int("channels", channels)
        check_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.cw, self.hc, self.hw = _Gate(kernel_size), _Gate(kernel_size), _Gate(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels)
        y1 = self.cw(x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)  # H takes the channel slot
        y2 = self.hc(x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)  # W takes the channel slot
        y3 = self.hw(x)
        return (y1 + y2 + y3) / 3
