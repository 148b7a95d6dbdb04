"""Non-local block, embedded Gaussian (Wang, Girshick, Gupta, He; "Non-local Neural Networks").

    y_i = sum_j softmax_j(theta(x_i)^T phi(x_j)) g(x_j)      theta, phi, g: 1x1 convs C -> C/2
    z = BN(W_z y) + x                                        W_z: 1x1 conv C/2 -> C

The attention runs through ``attnkit.attention`` (softmax, scale 1: the embedded
Gaussian has no 1/sqrt(d)). The batch norm after W_z starts at zero, so a fresh
block is the identity, as the paper prescribes. ``sub_sample`` max-pools phi and
g by 2 (the paper's cheaper variant).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...api import attention
from ...validation import check_feature_map, check_int
from ..factory import factory_kwargs


@factory_kwargs
class NonLocalBlock(nn.Module):
    paper = "Non-local Neural Networks"

    def __init__(self, channels: int, inner: int | None = None, sub_sample: bool = False):
        super().__init__()
        self.channels = check_int("channels", channels)
        inner = max(channels // 2, 1) if inner is None else check_int("inner", inner)
        self.sub_sample = bool(sub_sample)
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.w_z = nn.Conv2d(inner, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels)
        B, _, H, W = x.shape
        phi, g = self.phi(x), self.g(x)
        if self.sub_sample:
            if H < 2 or W < 2:
                raise ValueError(f"x has spatial size {(H, W)}; sub_sample=True needs height and width >= 2")
            phi, g = F.max_pool2d(phi, 2), F.max_pool2d(g, 2)
        q = self.theta(x).flatten(2).transpose(1, 2)[:, None]  # (B, 1, HW, inner)
        k = phi.flatten(2).transpose(1, 2)[:, None]
        v = g.flatten(2).transpose(1, 2)[:, None]
        y = attention(q, k, v, "softmax", scale=1.0)[:, 0].transpose(1, 2).reshape(B, -1, H, W)
        return self.bn(self.w_z(y)) + x
