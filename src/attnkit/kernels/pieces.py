"""Cutting inputs into the slices a kernel processes one at a time."""
from __future__ import annotations

import torch


def pieces(t: torch.Tensor | None, size: int, dim: int, length: int) -> list:
    """``t`` split into pieces of ``size`` along ``dim`` (``length`` long); ``None`` stays ``None`` per piece.

    ``split``, not slices taken in a loop: each slice's backward zero-fills a gradient of the whole tensor.
    """
    return [None] * -(-length // size) if t is None else list(t.split(size, dim))
