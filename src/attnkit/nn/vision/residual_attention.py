"""Attention module of the Residual Attention Network (Wang, Jiang, Qian, Yang, Li,
Zhang, Wang, Tang; "Residual Attention Network for Image Classification").

    h = pre(x)                                  p residual units
    T = trunk(h)                                t residual units
    M = sigmoid(head(bottom_up_top_down(h)))    soft mask in (0, 1), same shape as T
    out = post((1 + M) * T)                     attention residual learning; p residual units

Mask branch: ``depth`` max-pools (3x3, stride 2), r residual units after each
(2r at the lowest resolution), a residual unit on each skip connection, then the
symmetric top-down path: bilinear upsampling + skip, r residual units, up to the
input size; the head is two BN-ReLU-1x1-conv layers. Residual units are
pre-activation bottlenecks (C -> C/4 -> C). The module has
2p + t + 2 depth r + depth - 1 residual units.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...validation import check_feature_map, check_int
from ..factory import factory_kwargs


class ResidualUnit(nn.Module):
    """Pre-activation bottleneck: x + conv1x1(relu(bn(conv3x3(relu(bn(conv1x1(relu(bn(x)))))))))."""

    def __init__(self, channels: int):
        super().__init__()
        mid = max(channels // 4, 1)
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(), nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(), nn.Conv2d(mid, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _units(channels: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[ResidualUnit(channels) for _ in range(n)])


@factory_kwargs
class ResidualAttention(nn.Module):
    paper = "Residual Attention Network for Image Classification"

    def __init__(self, channels: int, p: int = 1, t: int = 2, r: int = 1, depth: int = 2):
        super().__init__()
        self.channels = check_int("channels", channels)
        check_int("p", p, minimum=0)
        check_int("t", t, minimum=0)
        check_int("r", r, minimum=0)
        self.depth = check_int("depth", depth)
        self.pre, self.trunk, self.post = _units(channels, p), _units(channels, t), _units(channels, p)
        self.down = nn.ModuleList([_units(channels, 2 * r if d == depth - 1 else r) for d in range(depth)])
        self.skips = nn.ModuleList([ResidualUnit(channels) for _ in range(depth - 1)])
        self.up = nn.ModuleList([_units(channels, r) for _ in range(depth - 1)])
        self.head = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 1),
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 1),
        )

    def mask(self, h: torch.Tensor) -> torch.Tensor:
        size, skips = h.shape[-2:], []
        for d in range(self.depth):
            h = self.down[d](F.max_pool2d(h, 3, stride=2, padding=1))
            if d < self.depth - 1:
                skips.append(self.skips[d](h))
        for d in reversed(range(self.depth - 1)):
            h = F.interpolate(h, size=skips[d].shape[-2:], mode="bilinear", align_corners=False) + skips[d]
            h = self.up[d](h)
        h = F.interpolate(h, size=size, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.head(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels)
        h = self.pre(x)
        return self.post((1 + self.mask(h)) * self.trunk(h))
