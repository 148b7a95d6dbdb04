"""Argument checks shared by the ``attnkit.nn`` layers (each error names the argument)."""
from __future__ import annotations

import torch


def check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")


def check_tokens(name: str, x, dim: int) -> None:
    """``x`` must be a floating tensor ``(batch, seq, dim)`` with at least one token."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, seq, {dim}), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim != 3 or x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (batch, seq, {dim}), got {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has sequence length 0; expected at least one token")
