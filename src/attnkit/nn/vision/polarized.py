"""Polarized self-attention (Liu, Chen, Guo, Wu, Yu; "Polarized Self-Attention:
Towards High-quality Pixel-wise Regression").

Channel-only branch (keeps C/2 channels, collapses space with a softmax):

    A_ch = sigmoid(LN(W_z(W_v(x) @ softmax_HW(W_q(x)))))     W_v: C -> C/2, W_q: C -> 1, W_z: C/2 -> C
    Z_ch = A_ch (C x 1 x 1) * x

Spatial-only branch (keeps H x W, collapses channels with a softmax):

    A_sp = sigmoid(softmax_C/2(GAP(W_q(x)))^T @ W_v(x))       W_q, W_v: C -> C/2,  A_sp is 1 x H x W
    Z_sp = A_sp * x

Layouts: ``"parallel"`` Z_ch(x) + Z_sp(x); ``"sequential"`` Z_sp(Z_ch(x)).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...validation import check_feature_map, check_int
from ..factory import factory_kwargs

LAYOUTS = ("parallel", "sequential")


@factory_kwargs
class PolarizedSelfAttention(nn.Module):
    paper = "Polarized Self-Attention: Towards High-quality Pixel-wise Regression"

    def __init__(self, channels: int, layout: str = "parallel"):
        super().__init__()
        self.channels = check_int("channels", channels, minimum=2)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.layout = layout
        half = channels // 2
        self.ch_v = nn.Conv2d(channels, half, 1)
        self.ch_q = nn.Conv2d(channels, 1, 1)
        self.ch_z = nn.Conv2d(half, channels, 1)
        self.ch_norm = nn.LayerNorm(channels)
        self.sp_q = nn.Conv2d(channels, half, 1)
        self.sp_v = nn.Conv2d(channels, half, 1)

    def channel_only(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        v = self.ch_v(x).reshape(B, -1, H * W)
        q = torch.softmax(self.ch_q(x).reshape(B, H * W, 1), dim=1)
        z = self.ch_z((v @ q)[..., None])  # (B, C, 1, 1)
        a = torch.sigmoid(self.ch_norm(z.reshape(B, C))).reshape(B, C, 1, 1)
        return a * x

    def spatial_only(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q = torch.softmax(self.sp_q(x).mean(dim=(2, 3)), dim=-1)[:, None, :]  # (B, 1, C/2)
        v = self.sp_v(x).reshape(B, -1, H * W)
        a = torch.sigmoid(q @ v).reshape(B, 1, H, W)
        return a * x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels)
        if self.layout == "parallel":
            return self.channel_only(x) + self.spatial_only(x)
        return self.spatial_only(self.channel_only(x))
