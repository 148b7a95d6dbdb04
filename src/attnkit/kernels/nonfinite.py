"""Keeping a NaN causal in chunked forms of recurrences, and the cheap test for one.

:func:`all_finite` says whether tensors hold only finite numbers, from their
sums (a NaN or infinity anywhere makes the sum non-finite): one vectorised
reduction, many times cheaper than ``isfinite(x).all()`` on a CPU. A sum that
overflows says "not finite" for finite numbers; callers then take their
careful path, which is exact too, only slower. Kernels that mask by adding
-inf test their keys with it and write -inf instead when a key is not finite.

A chunked form multiplies whole chunks: a masked-out entry is an exact zero,
but ``0 * NaN`` is NaN, so a NaN (or infinity) in a token's key or value would
reach every earlier output of its chunk through the matmuls, while the
recurrence it computes (and its reference) never lets a token touch the past.
:func:`hold_back_nonfinite` zeroes the tokens whose state inputs are not finite
(any finite value would do: no earlier output depends on them) and returns
where the recurrence would have been poisoned: from the first such token on,
per batch and head. :func:`poison` then writes NaN there, and into the final
state, as the recurrence does. Queries are read by their own output only and
need no care.
"""
from __future__ import annotations

import torch


def all_finite(*tensors: torch.Tensor | None) -> bool:
    """True when every given tensor holds only finite numbers (None is skipped); may say False for
    finite tensors whose float32 sum overflows."""
    return all(t is None or bool(torch.isfinite(t.sum(dtype=torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else None)))
               for t in tensors)


def hold_back_nonfinite(*inputs: torch.Tensor | None) -> tuple[list, torch.Tensor | None]:
    """Token inputs ``(B, H, N, ...)`` (or ``(B, H, N)``): the inputs with non-finite tokens zeroed, and
    ``poisoned (B, H, N)``, True from each head's first non-finite token on; ``None`` when all are finite."""
    if all_finite(*inputs):
        return list(inputs), None
    bad = None
    for t in inputs:
        if t is None:
            continue
        finite = torch.isfinite(t) if t.ndim == 3 else torch.isfinite(t).all(dim=-1)
        bad = ~finite if bad is None else bad | ~finite
    if bad is None or not bool(bad.any()):
        return list(inputs), None
    cleaned = [None if t is None else t.masked_fill(bad if t.ndim == 3 else bad.unsqueeze(-1), 0) for t in inputs]
    return cleaned, bad.cumsum(dim=-1) > 0


def poison(out: torch.Tensor, state, poisoned: torch.Tensor | None):
    """NaN in ``out (B, H, N, Dv)`` where ``poisoned`` (``(B, H or Hkv, N)``: kv heads are repeated to H),
    and in the final ``state``, a ``(B, H or Hkv, ...)`` tensor or a tuple of them, of the poisoned heads."""
    if poisoned is None:
        return out, state
    group = out.shape[1] // poisoned.shape[1]
    rows = poisoned.repeat_interleave(group, dim=1) if group > 1 else poisoned
    out = out.masked_fill(rows.unsqueeze(-1), float("nan"))
    if isinstance(state, tuple):
        return out, tuple(_poison_heads(t, poisoned) for t in state)
    return out, None if state is None else _poison_heads(state, poisoned)


def _poison_heads(state: torch.Tensor, poisoned: torch.Tensor) -> torch.Tensor:
    heads = poisoned[..., -1]
    if state.shape[1] != heads.shape[1]:
        heads = heads.repeat_interleave(state.shape[1] // heads.shape[1], dim=1)
    return state.masked_fill(heads.view(*heads.shape, *([1] * (state.ndim - 2))), float("nan"))
