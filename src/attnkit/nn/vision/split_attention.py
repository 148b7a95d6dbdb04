"""Split-attention convolution (Zhang et al.; "ResNeSt: Split-Attention Networks").

A grouped k x k convolution produces R splits (radix R) of C channels in each of
K cardinal groups; attention weights over the splits come from their sum:

    U_1..U_R = relu(BN(conv_{groups=K R}(x)))            each (B, C, H, W)
    s = GAP(U_1 + ... + U_R)
    a = rsoftmax(FC2(relu(BN(FC1(s)))))                   FC1: C -> d, FC2: d -> R C, both with K groups
    V = sum_r a_r * U_r                                   a_r sums to 1 over r per channel (sigmoid if R = 1)

d = max(C_in R / reduction, 32) as in the paper's implementation.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...validation import check_divides, check_feature_map, check_int
from ..factory import factory_kwargs


@factory_kwargs
class SplitAttention(nn.Module):
    paper = "ResNeSt: Split-Attention Networks"

    def __init__(self, in_channels: int, channels: int, kernel_size: int = 3, radix: int = 2,
                 cardinality: int = 1, reduction: int = 4, stride: int = 1):
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels)
        self.channels = check_int("channels", channels)
        self.radix = check_int("radix", radix)
        self.cardinality = check_int("cardinality", cardinality)
        check_int("kernel_size", kernel_size)
        check_int("reduction", reduction)
        check_int("stride", stride)
        check_divides("in_channels", in_channels, "cardinality * radix", cardinality * radix)
        check_divides("channels", channels, "cardinality", cardinality)
        hidden = max(in_channels * radix // reduction, 32)
        hidden += -hidden % cardinality
        self.conv = nn.Conv2d(in_channels, channels * radix, kernel_size, stride, padding=kernel_size // 2,
                              groups=cardinality * radix, bias=False)
        self.bn0 = nn.BatchNorm2d(channels * radix)
        self.fc1 = nn.Conv2d(channels, hidden, 1, groups=cardinality)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, channels * radix, 1, groups=cardinality)

    def split_weights(self, s: torch.Tensor) -> torch.Tensor:
        """(B, C, 1, 1) pooled sum -> (B, R, C) weights; a softmax over the radix per channel."""
        B, R, K, C = s.shape[0], self.radix, self.cardinality, self.channels
        logits = self.fc2(F.relu(self.bn1(self.fc1(s)))).reshape(B, K, R, C // K)
        if R == 1:
            return torch.sigmoid(logits).reshape(B, 1, C)
        return torch.softmax(logits, dim=2).transpose(1, 2).reshape(B, R, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.in_channels)
        u = F.relu(self.bn0(self.conv(x)))
        B, _, H, W = u.shape
        splits = u.reshape(B, self.radix, self.channels, H, W)
        a = self.split_weights(splits.sum(dim=1).mean(dim=(2, 3), keepdim=True))
        return (splits * a[..., None, None]).sum(dim=1)
