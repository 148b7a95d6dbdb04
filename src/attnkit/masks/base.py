"""Mask functions: ``(b, h, q_idx, kv_idx) -> bool``, composable with ``&``, ``|``, ``~``.

After attention-gym's ``mask_mod`` (the FlexAttention idea): a mask is a
vectorised function of broadcastable integer tensors that says which (query,
key) pairs may attend. ``q_idx`` is the query's *position* under attnkit's
bottom-right alignment (``kv_len - q_len + row``), so a mask means the same in
one call, in a KV-cache decode step and in cross-attention.

Each mask may also carry a *tile classifier*
``tiles(b, h, q_lo, q_hi, k_lo, k_hi) -> (any, all)`` over inclusive position
ranges (interval arithmetic). It lets :mod:`attnkit.masks.layout` classify
every tile of a 131072² matrix without looking at its 17 billion pairs. A
classifier may be conservative (say "some" where the truth is "none" or
"every"): the layout then evaluates the element mask on that tile and refines
it. Combinators derive classifiers from their parts; a mask without one is
classified by evaluating every pair (correct, slower).
"""
from __future__ import annotations

import operator
from typing import Callable

import torch

ElementFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
TileFn = Callable[..., tuple]


class MaskMod:
    """A named, composable mask function with an optional tile classifier."""

    def __init__(self, fn: ElementFn, tiles: TileFn | None = None, name: str = "mask"):
        self.fn, self.tiles, self.name = fn, tiles, name

    def __call__(self, b, h, q_idx, kv_idx) -> torch.Tensor:
        return self.fn(b, h, q_idx, kv_idx)

    def __and__(self, other: "MaskMod") -> "MaskMod":
        return and_masks(self, other)

    def __or__(self, other: "MaskMod") -> "MaskMod":
        return or_masks(self, other)

    def __invert__(self) -> "MaskMod":
        return not_mask(self)

    def __repr__(self) -> str:
        return f"MaskMod({self.name})"


def _tiles_of(masks):
    return None if any(m.tiles is None for m in masks) else [m.tiles for m in masks]


def and_masks(*masks: MaskMod) -> MaskMod:
    """Pairs every mask allows. Tiles: full if all are full, empty if one is empty."""
    return _joined(masks, operator.and_, "&", "and_masks")


def or_masks(*masks: MaskMod) -> MaskMod:
    """Pairs any mask allows. Tiles: full if one is full, empty if all are empty."""
    return _joined(masks, operator.or_, "|", "or_masks")


def _joined(masks, op, symbol, caller) -> MaskMod:
    """The masks joined pair by pair with ``op``, and their tiles' (some pair, every pair) flags with the same ``op``."""
    if not masks:
        raise ValueError(f"{caller} needs at least one mask")

    def fn(b, h, q, kv):
        out = masks[0](b, h, q, kv)
        for m in masks[1:]:
            out = op(out, m(b, h, q, kv))
        return out

    parts = _tiles_of(masks)

    def tiles(*bounds):
        results = [t(*bounds) for t in parts]
        any_, all_ = results[0]
        for a, e in results[1:]:
            any_, all_ = op(any_, a), op(all_, e)
        return any_, all_

    return MaskMod(fn, tiles if parts else None, f" {symbol} ".join(m.name for m in masks))


def not_mask(mask: MaskMod) -> MaskMod:
    """Pairs the mask forbids. Tiles: full where it is empty, empty where it is full."""

    def tiles(*bounds):
        any_, all_ = mask.tiles(*bounds)
        return ~all_, ~any_

    return MaskMod(lambda b, h, q, kv: ~mask(b, h, q, kv), tiles if mask.tiles else None, f"~({mask.name})")


def full_mask() -> MaskMod:
    """Every pair (dense attention)."""

    def fn(b, h, q, kv):
        return torch.ones_like(q + kv, dtype=torch.bool)

    def tiles(b, h, q_lo, q_hi, k_lo, k_hi):
        t = torch.ones_like(q_lo + k_lo, dtype=torch.bool)
        return t, t

    return MaskMod(fn, tiles, "full")


def causal_mask() -> MaskMod:
    """Causal: key position <= query position."""

    def tiles(b, h, q_lo, q_hi, k_lo, k_hi):
        return k_lo <= q_hi, k_hi <= q_lo

    return MaskMod(lambda b, h, q, kv: kv <= q, tiles, "causal")


def tensor_mask(mask: torch.Tensor, q_len: int, kv_len: int) -> MaskMod:
    """A boolean tensor broadcastable to ``(B, H, q_len, kv_len)`` as a mask function.

    Rows are addressed by position (``kv_len - q_len + row``); tiles are
    classified by reducing the tensor over each tile (it is materialised anyway).
    """
    if mask.dtype != torch.bool or mask.ndim != 4:
        raise ValueError(f"tensor_mask needs a 4-D boolean tensor, got {mask.ndim}-D {mask.dtype}")
    offset = kv_len - q_len

    def fn(b, h, q, kv):
        m = mask.expand(*mask.shape[:2], q_len, kv_len)
        bb = b if mask.shape[0] > 1 else torch.zeros_like(b)
        hh = h if mask.shape[1] > 1 else torch.zeros_like(h)
        return m[bb, hh, (q - offset).clamp(0, q_len - 1), kv.clamp(0, kv_len - 1)]

    def tiles(b, h, q_lo, q_hi, k_lo, k_hi):
        m = mask.expand(*mask.shape[:2], q_len, kv_len)
        q_lo, k_lo = q_lo.flatten(), k_lo.flatten()
        nq, nk = q_lo.numel(), k_lo.numel()
        bq = int(q_lo[1] - q_lo[0]) if nq > 1 else q_len
        bk = int(k_lo[1] - k_lo[0]) if nk > 1 else kv_len
        if nq * bq != q_len or nk * bk != kv_len:  # padding counts as "not allowed": edge tiles turn partial
            m = torch.nn.functional.pad(m, (0, nk * bk - kv_len, 0, nq * bq - q_len), value=False)
        m = m.reshape(*m.shape[:2], nq, bq, nk, bk)
        return m.any(dim=5).any(dim=3), m.all(dim=5).all(dim=3)

    return MaskMod(fn, tiles, "tensor")
