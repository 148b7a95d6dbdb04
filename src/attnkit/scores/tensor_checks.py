"""Checks for the extra tensor inputs of a mechanism (gains, tables, temperatures).

Each error names the argument and the shape, dtype or device that was expected,
and is raised before any attention work is done.
"""
from __future__ import annotations

import torch


def check_tensor(name: str, t, shape: tuple, like: torch.Tensor, *, optional: bool = False) -> None:
    """``t`` must be a floating tensor of exactly ``shape`` with ``like``'s dtype and device."""
    if t is None:
        if optional:
            return
        raise TypeError(f"{name} is required: a tensor of shape {shape}")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape}, got {type(t).__name__}")
    if t.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but q has {like.dtype}; expected the same dtype")
    if t.device != like.device:
        raise ValueError(f"{name} is on device {t.device} but q is on {like.device}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {tuple(shape)}")


def check_int(name: str, value, *, minimum: int = 1, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_float(name: str, value, *, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
