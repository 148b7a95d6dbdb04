"""Argument checks shared by the vision modules; each error names the argument."""
from __future__ import annotations

import torch


def check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_divides(name: str, value: int, divisor_name: str, divisor: int) -> None:
    if value % divisor != 0:
        raise ValueError(f"{name} ({value}) must be divisible by {divisor_name} ({divisor})")


def check_feature_map(x, channels: int, name: str = "x") -> None:
    """``x`` must be a floating-point ``(batch, channels, height, width)`` tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, channels, height, width), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have 4 dimensions (batch, channels, height, width), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels but the module was built for {channels}")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name} has an empty spatial size {tuple(x.shape[2:])}; expected height, width >= 1")


def check_grid(x, size: int, size_name: str, name: str = "x") -> None:
    """Height and width must be multiples of a window / block size."""
    H, W = x.shape[2], x.shape[3]
    if H % size or W % size:
        raise ValueError(f"{name} has spatial size {(H, W)}; height and width must be multiples of {size_name}={size}")
