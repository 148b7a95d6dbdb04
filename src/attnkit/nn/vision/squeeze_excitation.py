"""Squeeze-and-Excitation block (Hu, Shen, Albanie, Sun, Wu; "Squeeze-and-Excitation Networks").

    s = sigmoid(W2 relu(W1 GAP(x)))         W1: C -> C/r,  W2: C/r -> C
    out = s * x                             (channel-wise rescaling)

The paper counts 2 C^2 / r weights per block (the two FC matrices); with biases
(``bias=True``, as in the released models) add C/r + C.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...validation import check_feature_map, check_int
from ..factory import factory_kwargs


@factory_kwargs
class SqueezeExcitation(nn.Module):
    paper = "Squeeze-and-Excitation Networks"

    def __init__(self, channels: int, reduction: int = 16, bias: bool = True):
        super().__init__()
        self.channels = check_int("channels", channels)
        check_int("reduction", reduction)
        if channels // reduction < 1:
            raise ValueError(f"reduction ({reduction}) must not exceed channels ({channels}): the bottleneck C/r needs >= 1 unit")
        self.fc1 = nn.Linear(channels, channels // reduction, bias=bias)
        self.fc2 = nn.Linear(channels // reduction, channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * s[:, :, None, None]
