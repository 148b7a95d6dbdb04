"""CBAM (Woo, Park, Lee, Kweon; "CBAM: Convolutional Block Attention Module").

Channel attention, then spatial attention, each multiplied onto the features:

    Mc = sigmoid(MLP(AvgPool_s(F)) + MLP(MaxPool_s(F)))      shared MLP C -> C/r -> C
    F' = Mc * F
    Ms = sigmoid(conv7x7([AvgPool_c(F'); MaxPool_c(F')]))    2 -> 1 channels
    F'' = Ms * F'

Parameters: the shared MLP's 2 C^2 / r weights (+ C/r + C biases) and the
2 k^2 weights of the spatial convolution (bias-free, as released).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...validation import check_feature_map, check_int
from ..factory import factory_kwargs


@factory_kwargs
class CBAM(nn.Module):
    paper = "CBAM: Convolutional Block Attention Module"

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        self.channels = check_int("channels", channels)
        check_int("reduction", reduction)
        check_int("kernel_size", kernel_size)
        if channels // reduction < 1:
            raise ValueError(f"reduction ({reduction}) must not exceed channels ({channels})")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd so the spatial map keeps its size, got {kernel_size}")
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def _mlp(self, s: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(s)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels)
        mc = torch.sigmoid(self._mlp(x.mean(dim=(2, 3))) + self._mlp(x.amax(dim=(2, 3))))
        x = x * mc[:, :, None, None]
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))
