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

from ...validation import check_divides, check_feature_map, check_int
from ..factory import factory_kwargs


@factory_kwargs
class ULSAM(nn.Module):
    paper = "ULSAM: Ultra-Lightweight Subspace Attention Module for Compact Convolutional Neural Networks"

    def __init__(self, channels: int, groups: int = 4, bias: bool = True):
        super().__init__()
        self.channels = check_int("channels", channels)
        self.groups = check_int("groups", groups)
        check_divides("channels", channels, "groups", groups)
        self.per = channels // groups
        # All subspaces at once. A depthwise 1x1 conv is a per-channel scale (and shift);
        # the pointwise convs are one (C/g -> 1) weight vector per subspace.
        self.dw_weight = nn.Parameter(torch.empty(channels).uniform_(-1, 1))
        self.pw_weight = nn.Parameter(torch.empty(groups, self.per).uniform_(-1, 1) / self.per ** 0.5)
        self.dw_bias = nn.Parameter(torch.zeros(channels)) if bias else None
        self.pw_bias = nn.Parameter(torch.zeros(groups)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels)
        B, C, H, W = x.shape
        d = x * self.dw_weight[:, None, None]
        if self.dw_bias is not None:
            d = d + self.dw_bias[:, None, None]
        d = max_pool_3x3(d).reshape(B, self.groups, self.per, H * W)
        a = torch.einsum("bgcn,gc->bgn", d, self.pw_weight)
        if self.pw_bias is not None:
            a = a + self.pw_bias[:, None]
        a = torch.softmax(a, dim=-1).reshape(B, self.groups, 1, H, W)  # one map per subspace
        f = x.reshape(B, self.groups, self.per, H, W)
        return (a * f + f).reshape(B, C, H, W)


def max_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    """3x3 max pooling, stride 1, padding 1 (border cells take the max of what exists), as
    running maxima over 3 row shifts then 3 column shifts: the values of
    ``F.max_pool2d(x, 3, 1, 1)``, about 10x faster forward on this CPU. (At exact ties the
    gradient is shared between the tied inputs instead of going to one of them.)"""
    p = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
    rows = torch.maximum(torch.maximum(p[..., :-2, :], p[..., 1:-1, :]), p[..., 2:, :])
    return torch.maximum(torch.maximum(rows[..., :-2], rows[..., 1:-1]), rows[..., 2:])
