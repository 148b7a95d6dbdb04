"""Token plumbing shared by the ViT blocks: NCHW <-> windows, heads, the MLP."""
from __future__ import annotations

import torch
import torch.nn as nn


def window_partition(t: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window^2, C), windows in row-major order within each image."""
    B, H, W, C = t.shape
    t = t.reshape(B, H // window, window, W // window, window, C).permute(0, 1, 3, 2, 4, 5)
    return t.reshape(-1, window * window, C)


def window_merge(w: torch.Tensor, window: int, B: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`."""
    C = w.shape[-1]
    t = w.reshape(B, H // window, W // window, window, window, C).permute(0, 1, 3, 2, 4, 5)
    return t.reshape(B, H, W, C)


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads * d) -> (B, heads, N, d)."""
    B, N, C = t.shape
    return t.reshape(B, N, heads, C // heads).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    B, Hh, N, d = t.shape
    return t.transpose(1, 2).reshape(B, N, Hh * d)


class Mlp(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}")
        hidden = int(dim * mlp_ratio)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
