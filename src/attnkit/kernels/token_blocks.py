"""Blocks of consecutive tokens read in place, without padding the sequence to whole blocks.

A block-sparse estimator or kernel cuts ``x (B, H, N, D)`` into blocks of
``block`` tokens, and ``N`` is rarely a multiple of ``block``. Padding ``x`` to
whole blocks copies all of it (``F.pad`` copies even when it adds nothing);
these helpers read the whole blocks as views of ``x`` and treat the last,
shorter block on its own, so that only block-sized pieces or pooled results
are ever copied.
"""
from __future__ import annotations

import torch


def whole_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """``(B, H, N // block, block, D)``: the whole blocks of ``x``, a view when ``x`` is contiguous."""
    B, H, N, D = x.shape
    whole = N // block
    return x[:, :, : whole * block].reshape(B, H, whole, block, D)


def last_block(x: torch.Tensor, block: int) -> torch.Tensor:
    """``(B, H, N % block, D)``: the tokens after the whole blocks (empty when ``block`` divides ``N``)."""
    return x[:, :, x.shape[2] // block * block:]


def block_windows(x: torch.Tensor, block: int) -> torch.Tensor:
    """Every run of ``block`` consecutive rows of ``x (B, H, N, D)`` flattened, as an overlapping view
    ``(B H N - block + 1, block D)``: row ``(b H + h) N + t`` holds tokens ``t .. t + block - 1`` of head ``h``.

    ``index_select`` on it copies whole blocks (row ``(b H + h) N + c block`` is block ``c``) as fast as on a
    padded ``(tiles, block D)`` copy, for any ``N``. A row starting fewer than ``block`` tokens before the end of
    a head runs into the next head: callers read only blocks that lie wholly inside the sequence.
    """
    B, H, N, D = x.shape
    if B * H * N < block:
        raise ValueError(f"block_windows needs at least one whole block: {B * H * N} rows, block={block}")
    flat = x.contiguous().view(B * H * N, D)
    return flat.as_strided((B * H * N - block + 1, block * D), (D, 1))


def block_means(x: torch.Tensor, block: int, dtype: torch.dtype | None = None, chunk: int = 1 << 20) -> torch.Tensor:
    """``(B, H, R, D)``, ``R = ceil(N / block)``: the mean of each block's real tokens, summed in ``dtype``
    (default ``x``'s). In ``x``'s dtype the whole blocks are summed in one reduction of a view of ``x``; another
    ``dtype`` converts about ``chunk`` numbers of ``x`` at a time, never all of it."""
    dtype = x.dtype if dtype is None else dtype
    B, H, N, D = x.shape
    whole = whole_blocks(x, block)
    if dtype == x.dtype:
        parts = [whole.sum(3)]
    else:
        step = max(1, chunk // max(1, B * H * block * D))
        parts = [whole[:, :, c:c + step].to(dtype).sum(3) for c in range(0, whole.shape[2], step)]
    rest = last_block(x, block)
    if rest.shape[2]:
        parts.append(rest.to(dtype).sum(2, keepdim=True))
    sums = torch.cat(parts, dim=2) if parts else x.new_zeros(B, H, 0, D, dtype=dtype)
    counts = (N - torch.arange(sums.shape[2], device=x.device) * block).clamp(max=block)
    return sums / counts[:, None].to(dtype)


def block_extremes(x: torch.Tensor, block: int, how: str) -> torch.Tensor:
    """``(B, H, R, D)``: the elementwise ``how`` (``"max"`` or ``"min"``) over each block's real tokens."""
    reduce = torch.amax if how == "max" else torch.amin
    out = reduce(whole_blocks(x, block), dim=3)
    rest = last_block(x, block)
    if rest.shape[2]:
        out = torch.cat([out, reduce(rest, dim=2, keepdim=True)], dim=2)
    return out
