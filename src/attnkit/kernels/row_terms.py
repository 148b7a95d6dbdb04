"""A per-row term folded into a matmul: ``[a, c] . [b, 1] = a . b + c``.

FlashAttention's backward subtracts a row term from a whole score tile twice:
``P = exp2(S - lse)`` and ``dS = P * (dP - delta)``. Carrying ``-lse`` (or
``-delta``) as one more column of the row operand and a column of ones on the
other makes the matmul produce ``S - lse`` (``dP - delta``) directly, which
spares a pass over the tile and a gather of the row terms for one more step of
the matmul's inner dimension (measured about 10% faster for the matmul, the
subtraction and the ``exp2`` together on one loaded CPU core, 256 x 64 x 64
to 512 x 64 x 1024 tiles).
"""
from __future__ import annotations

import torch


def with_ones(x: torch.Tensor) -> torch.Tensor:
    """``x (..., E)`` with a column of ones appended: ``(..., E + 1)``."""
    return torch.cat([x, x.new_ones(*x.shape[:-1], 1)], -1)
