"""Coordinate attention (Hou, Zhou, Feng; "Coordinate Attention for Efficient Mobile
Network Design").

Pool along each axis separately, encode both strips together, split, and gate:

    z_h = mean_W(x) (C x H x 1),  z_w = mean_H(x) (C x 1 x W)
    f = delta(BN(F1([z_h; z_w])))          F1: 1x1 conv C -> mip, mip = max(8, C / r)
    g_h = sigmoid(F_h(f_h)),  g_w = sigmoid(F_w(f_w))    1x1 convs mip -> C
    out = x * g_h * g_w

delta is h-swish as in the released models. Parameters: (C + 1) mip + 2 mip
(batch norm) + 2 (mip + 1) C.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...validation import check_feature_map, check_int
from ..factory import factory_kwargs


@factory_kwargs
class CoordinateAttention(nn.Module):
    paper = "Coordinate Attention for Efficient Mobile Network Design"

    def __init__(self, channels: int, reduction: int = 32, min_hidden: int = 8):
        super().__init__()
        self.channels = check_int("channels", channels)
        check_int("reduction", reduction)
        check_int("min_hidden", min_hidden)
        mip = max(min_hidden, channels // reduction)
        self.encode = nn.Sequential(nn.Conv2d(channels, mip, 1), nn.BatchNorm2d(mip), nn.Hardswish())
        self.conv_h = nn.Conv2d(mip, channels, 1)
        self.conv_w = nn.Conv2d(mip, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels)
        H = x.shape[2]
        z = torch.cat([x.mean(dim=3, keepdim=True), x.mean(dim=2, keepdim=True).transpose(2, 3)], dim=2)
        f = self.encode(z)
        g_h = torch.sigmoid(self.conv_h(f[:, :, :H]))
        g_w = torch.sigmoid(self.conv_w(f[:, :, H:].transpose(2, 3)))
        return x * g_h * g_w
