"""Multi-dimensional locality for images and video: tokens on a 1-/2-/3-D grid.

Each query sees a box of keys: per axis an interval ``[lo, hi]`` (and, with
dilation, only keys in the query's residue class). The patterns:

- neighborhood attention ("Neighborhood Attention Transformer"; NATTEN): a
  ``kernel``-sized window centred on the query, shifted inwards at borders so
  it always holds ``kernel`` keys; with ``dilation`` ("Dilated Neighborhood
  Attention Transformer"), with ``stride`` (queries in a stride group share the
  window of the group's centre query, the right-hand one of an even group as in
  NATTEN, "Generalized Neighborhood Attention: Multi-dimensional Sparse
  Attention at the Speed of Light") and per-axis
  causality (the window ends at the query);
- blocked local attention with halos ("Scaling Local Self-Attention for
  Parameter Efficient Visual Backbones", HaloNet): a block's queries see the
  block grown by ``halo`` on every side (keys outside the image do not exist);
- windowed / shifted-window attention ("Swin Transformer"): same window after
  shifting by ``shift``; the cyclic shift plus Swin's region mask is exactly
  "same window index of ``floor((x - shift) / window)``".

Token order is raster (row-major) or *tiled* (``tile``: tokens of each spatial
tile contiguous), the layout GNA/NATTEN use so that neighbourhoods become
block-sparse. Tiles are classified from each query block's hull of visible key
indices (the box corners are its first and last keys in both orders), then
refined element-wise.
"""
from __future__ import annotations

import math

import torch

from .base import MaskMod
from ..validation import check_int


def _tuple(name, value, dims, minimum=1):
    t = (value,) * dims if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(t) != dims:
        raise ValueError(f"{name} must be an integer >= {minimum} or {dims} of them, got {value!r}")
    return tuple(check_int(name, x, minimum=minimum) for x in t)


class Grid:
    """Token index <-> grid coordinates, raster or tiled order."""

    def __init__(self, dims, tile=None):
        self.dims = _tuple("grid", dims, len(tuple(dims)) if not isinstance(dims, int) else 1)
        self.tile = None if tile is None else _tuple("tile", tile, len(self.dims))
        if self.tile and any(d % t for d, t in zip(self.dims, self.tile)):
            raise ValueError(f"tile {self.tile} must divide the grid {self.dims}")
        self.n = math.prod(self.dims)

    def _unravel(self, idx, shape):
        out = []
        for d in reversed(shape):
            out.append(idx.remainder(d))
            idx = idx // d
        return out[::-1]

    def coords(self, idx):
        if self.tile is None:
            return self._unravel(idx, self.dims)
        per_tile = math.prod(self.tile)
        outer = self._unravel(idx // per_tile, [d // t for d, t in zip(self.dims, self.tile)])
        inner = self._unravel(idx.remainder(per_tile), self.tile)
        return [o * t + i for o, i, t in zip(outer, inner, self.tile)]

    def index(self, coords):
        if self.tile is None:
            idx = torch.zeros_like(coords[0])
            for c, d in zip(coords, self.dims):
                idx = idx * d + c
            return idx
        outer = [c // t for c, t in zip(coords, self.tile)]
        inner = [c.remainder(t) for c, t in zip(coords, self.tile)]
        return Grid([d // t for d, t in zip(self.dims, self.tile)]).index(outer) * math.prod(self.tile) + Grid(
            self.tile).index(inner)

    def permutation(self) -> torch.Tensor:
        """``perm[i]`` = raster index of the token at position ``i`` of this order (``x_tiled = x[:, :, perm]``)."""
        return Grid(self.dims).index(self.coords(torch.arange(self.n)))


def box_mask(grid: Grid, axes, name: str) -> MaskMod:
    """Keys inside a per-axis box: ``axes[a](coord) -> (lo, hi, dilation)`` for each axis."""

    def box(pos):
        c = grid.coords(pos.clamp(0, grid.n - 1))
        return c, [axes[a](c[a]) for a in range(len(c))]

    def fn(b, h, q, kv):
        qc, bounds = box(q)
        kc = grid.coords(kv.clamp(0, grid.n - 1))
        ok = (kv < grid.n) & (q < grid.n)
        for a, (lo, hi, dil) in enumerate(bounds):
            ok = ok & (kc[a] >= lo) & (kc[a] <= hi)
            if dil > 1:
                ok = ok & (kc[a].remainder(dil) == qc[a].remainder(dil))
        return ok

    def tiles(b, h, q_lo, q_hi, k_lo, k_hi):
        starts = q_lo.flatten()
        # every query position of the blocks, also those before the grid (cross-attention with more queries
        # than keys: they see the box of position 0, as in fn); those past it see nothing and add nothing
        pos = torch.arange(int(starts.min()), int(q_hi.max().clamp(max=grid.n - 1)) + 1, device=q_lo.device)
        _, bounds = box(pos)
        first = grid.index([lo.clamp(min=0) for lo, _, _ in bounds])
        last = grid.index([torch.minimum(hi, torch.full_like(hi, d - 1)) for (_, hi, _), d in zip(bounds, grid.dims)])
        block = torch.bucketize(pos, starts, right=True) - 1
        low = torch.full_like(starts, grid.n).scatter_reduce(0, block, first, "amin")
        high = torch.full_like(starts, -1).scatter_reduce(0, block, last, "amax")
        any_ = (k_lo <= high.view_as(q_lo)) & (k_hi >= low.view_as(q_lo))
        return any_, torch.zeros_like(any_)

    return MaskMod(fn, tiles, name)


def neighborhood(grid: Grid, kernel, dilation=1, stride=1, causal=False) -> MaskMod:
    """NA / DiNA / GNA over ``grid``: per-axis ``kernel``, ``dilation``, ``stride``, ``causal``."""
    n = len(grid.dims)
    kernel, dilation, stride = _tuple("kernel", kernel, n), _tuple("dilation", dilation, n), _tuple("stride", stride, n)
    causal = (causal,) * n if isinstance(causal, bool) else tuple(causal)
    for a in range(n):
        if causal[a] and stride[a] > 1:
            raise ValueError(f"stride > 1 is not supported on a causal axis (axis {a})")

    def axis(a):
        L, k, d, s = grid.dims[a], kernel[a], dilation[a], stride[a]

        def bounds(i):
            r, sub = i.remainder(d), i // d
            length = (L - r + d - 1) // d  # positions of this residue class
            if causal[a]:
                lo, hi = (sub - k + 1).clamp(min=0), sub
            else:
                # the group's centre query, the right one of the two middle queries of an even
                # stride (as NATTEN's GNA): stride = kernel then gives exactly blocked attention
                centre = torch.minimum((sub // s) * s + s // 2, length - 1)
                k_eff = torch.clamp(length, max=k)
                lo = torch.clamp(centre - k // 2, min=0)
                lo = torch.minimum(lo, length - k_eff)
                hi = lo + k_eff - 1
            return lo * d + r, hi * d + r, d

        return bounds

    return box_mask(grid, [axis(a) for a in range(n)],
                    f"neighborhood(k={kernel},d={dilation},s={stride},causal={causal})")


def halo(grid: Grid, block, halo_size) -> MaskMod:
    """HaloNet: queries of a ``block`` see the block grown by ``halo_size`` per side."""
    n = len(grid.dims)
    block, halo_size = _tuple("block", block, n), _tuple("halo", halo_size, n, minimum=0)

    def axis(a):
        return lambda i: ((i // block[a]) * block[a] - halo_size[a], (i // block[a] + 1) * block[a] - 1 + halo_size[a], 1)

    return box_mask(grid, [axis(a) for a in range(n)], f"halo(block={block},halo={halo_size})")


def swin(grid: Grid, window, shift=0) -> MaskMod:
    """Swin windows of ``window`` per axis, shifted by ``shift`` (cyclic shift + region mask)."""
    n = len(grid.dims)
    window, shift = _tuple("window", window, n), _tuple("shift", shift, n, minimum=0)

    def axis(a):
        def bounds(i):
            g = torch.div(i - shift[a], window[a], rounding_mode="floor")
            return g * window[a] + shift[a], g * window[a] + shift[a] + window[a] - 1, 1

        return bounds

    return box_mask(grid, [axis(a) for a in range(n)], f"swin(window={window},shift={shift})")


def grid_for(n_tokens: int, tail) -> Grid:
    """A raster grid ``(ceil(n / prod(tail)), *tail)`` holding ``n_tokens`` (the last row may be ragged)."""
    tail = tuple(tail)
    return Grid((max(1, -(-n_tokens // math.prod(tail))), *tail))
