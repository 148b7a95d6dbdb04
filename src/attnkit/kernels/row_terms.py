"""A per-row term folded into a matmul: ``[a, c] . [b, 1] = a . b + c``.

FlashAttention's backward subtracts a row term from a whole score tile twice:
``P = exp2(S - lse)`` and ``dS = P * (dP - delta)``. Carrying ``-lse`` (or
``-delta``) as one more column of the row operand and a column of ones on the
other makes the matmul produce ``S - lse`` (``dP - delta``) directly, which
spares a pass over the tile and a gather of the row terms for one more step of
the matmul's inner dimension (measured about 10% faster for the matmul, the
subtraction and the ``exp2`` together on one loaded CPU core, 256 x 64 x 64
to 512 x 64 x 1024 tiles).

The row term ``delta = rowsum(dO * O)`` itself is taken by :func:`row_dot` a
chunk of rows at a time, so the products never fill a fresh tensor the size of
``dO`` (at N = 32768, 8 heads, D = 64 that is 64 MB whose every page faults on
first touch).
"""
from __future__ import annotations

import torch


def with_ones(x: torch.Tensor) -> torch.Tensor:
    """``x (..., E)`` with a column of ones appended: ``(..., E + 1)``."""
    return torch.cat([x, x.new_ones(*x.shape[:-1], 1)], -1)


def row_dot(a: torch.Tensor, b: torch.Tensor, rows: int = 1 << 12) -> torch.Tensor:
    """``(a * b).sum(-1)`` for ``a, b (..., E)``, the products taken ``rows`` rows at a time in one small buffer
    (each row summed as by the plain expression)."""
    E = a.shape[-1]
    a2, b2 = a.reshape(-1, E), b.reshape(-1, E)
    out = a.new_empty(a2.shape[0])
    product = a.new_empty(min(rows, a2.shape[0]), E)
    for r0 in range(0, a2.shape[0], rows):
        r1 = min(r0 + rows, a2.shape[0])
        torch.sum(torch.mul(a2[r0:r1], b2[r0:r1], out=product[: r1 - r0]), -1, out=out[r0:r1])
    return out.view(a.shape[:-1])
