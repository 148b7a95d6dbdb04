"""Large-kernel attention, LKA (Guo, Lu, Liu, Liu, Cheng, Hu; "Visual Attention Network").

A K x K convolution decomposed into a (2d-1) x (2d-1) depthwise convolution, a
ceil(K/d) x ceil(K/d) depthwise convolution with dilation d, and a 1x1
convolution; the result is an attention map multiplied onto the input:

    attn = Conv1x1(DW-D-Conv(DW-Conv(x)))
    out = attn * x

Weights (the paper's count): C (ceil(K/d)^2 + (2d-1)^2) + C^2; biases add 3C.
Defaults K = 21, d = 3: a 5x5 depthwise and a 7x7 depthwise conv with dilation 3.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ...validation import check_feature_map, check_int
from ..factory import factory_kwargs


@factory_kwargs
class LargeKernelAttention(nn.Module):
    paper = "Visual Attention Network"

    def __init__(self, channels: int, kernel_size: int = 21, dilation: int = 3):
        super().__init__()
        self.channels = check_int("channels", channels)
        check_int("kernel_size", kernel_size)
        check_int("dilation", dilation)
        local, dilated = 2 * dilation - 1, math.ceil(kernel_size / dilation)
        if dilated % 2 == 0:
            raise ValueError(f"ceil(kernel_size / dilation) = {dilated} must be odd so the map keeps its size; "
                             f"got kernel_size={kernel_size}, dilation={dilation}")
        self.dw = nn.Conv2d(channels, channels, local, padding=local // 2, groups=channels)
        self.dw_dilated = nn.Conv2d(channels, channels, dilated, padding=(dilated // 2) * dilation,
                                    dilation=dilation, groups=channels)
        self.pw = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels)
        return x * self.pw(self.dw_dilated(self.dw(x)))
