"""ULSAM (Saini, Jha, Das, Mittal, Mohan; "ULSAM: Ultra-Lightweight Subspace
Attention Module for Compact Convolutional Neural Networks").

The channels are split into g subspaces F_1..F_g of C/g channels; each learns
one spatial attention map, softmax-normalised over all H*W positions:

    A_n = softmax(PW_1(maxpool_3x3,stride 1(DW_1x1(F_n))))     PW_1: C/g -> 1 channel
    F^_n = A_n * F_n + F_n
    out = concat(F^_1, ..., F^_g)

Parameters: per subspace C/g depthwise weights and C/g pointwise weights, so 2C
weights for the module (plus C + g biases with ``bias=True``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._checks import check_divides, check_feature_map, check_int


class ULSAM(nn.Module):
    paper = "ULSAM: Ultra-Lightweight Subspace Attention Module for Compact Convolutional Neural Networks"

    def __init__(self, channels: int, groups: int = 4, bias: bool = True):
        super().__init__()
        self.channels = check_int("channels", channels)
        self.groups = check_int("groups", groups)
        check_divides("channels", channels, "groups", groups)
        per = channels // groups
        # All subspaces at once: the depthwise conv is per channel anyway, and a grouped
        # 1x1 conv with `groups` groups is one pointwise conv per subspace.
        self.dw = nn.Conv2d(channels, channels, 1, groups=channels, bias=bias)
        self.pw = nn.Conv2d(channels, groups, 1, groups=groups, bias=bias)
        self.per = per

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels)
        B, C, H, W = x.shape
        a = self.pw(F.max_pool2d(self.dw(x), 3, stride=1, padding=1))  # (B, g, H, W)
        a = torch.softmax(a.reshape(B, self.groups, H * W), dim=-1).reshape(B, self.groups, 1, H, W)
        f = x.reshape(B, self.groups, self.per, H, W)
        return (a * f + f).reshape(B, C, H, W)
