"""Radial attention's static spatio-temporal energy-decay mask.

"Radial Attention: O(n log n) Sparse Attention with Energy Decay for Long Video
Generation": tokens are ``frames x tokens_per_frame``; a query attends to keys
of the same frame fully, and to keys of a frame at temporal distance ``d``
only within a spatial band whose width halves each time ``d`` doubles:
``|s_q - s_k| <= tokens_per_frame >> bitlen(d)`` (width ``F/2`` at ``d = 1``,
``F/4`` at ``d = 2, 3``, ...). The first frame stays visible to all (the
attention sink of the authors' release). Compute density therefore decays
exponentially with temporal distance, for ``O(n log n)`` pairs in total.
"""
from __future__ import annotations

import torch

from .base import MaskMod
from .window import _check_int


def _bitlen(d: torch.Tensor) -> torch.Tensor:
    """Number of bits of a non-negative integer tensor (0 -> 0)."""
    return torch.where(d > 0, torch.floor(torch.log2(d.clamp(min=1).double())).long() + 1, 0)


def radial(tokens_per_frame: int, sink_frames: int = 1) -> MaskMod:
    F = _check_int("tokens_per_frame", tokens_per_frame, 1)
    _check_int("sink_frames", sink_frames)

    def width(d):
        return torch.where(d == 0, F, F >> _bitlen(d).clamp(max=62))

    def fn(b, h, q, kv):
        d = (q // F - kv // F).abs()
        band = (q.remainder(F) - kv.remainder(F)).abs() <= width(d)
        return band | (kv // F < sink_frames)

    def tiles(b, h, q_lo, q_hi, k_lo, k_hi):
        # A tile spans frames [q_lo // F, q_hi // F] x [k_lo // F, k_hi // F]; classify each frame
        # pair it touches (at most two per side when the block is no larger than a frame) exactly.
        any_ = torch.zeros(torch.broadcast_shapes(q_lo.shape, k_lo.shape), dtype=torch.bool, device=q_lo.device)
        all_ = torch.ones_like(any_)
        for qf in (q_lo // F, q_lo // F + 1):
            for kf in (k_lo // F, k_lo // F + 1):
                s_lo = torch.maximum(q_lo, qf * F) - qf * F
                s_hi = torch.minimum(q_hi, qf * F + F - 1) - qf * F
                t_lo = torch.maximum(k_lo, kf * F) - kf * F
                t_hi = torch.minimum(k_hi, kf * F + F - 1) - kf * F
                real = (s_lo <= s_hi) & (t_lo <= t_hi)
                w = width((qf - kf).abs())
                sink = kf < sink_frames
                a = sink | ((s_hi - t_lo >= -w) & (s_lo - t_hi <= w))
                e = sink | ((s_lo - t_hi >= -w) & (s_hi - t_lo <= w))
                any_ = any_ | (real & a)
                all_ = all_ & (~real | e)
        spans = ((q_hi // F - q_lo // F) <= 1) & ((k_hi // F - k_lo // F) <= 1)
        return any_ | ~spans, all_ & spans

    return MaskMod(fn, tiles, f"radial(F={F})")
