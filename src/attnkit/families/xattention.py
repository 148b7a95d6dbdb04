"""XAttention: block-sparse prefill chosen by antidiagonal scoring (Xu et al., "XAttention: Block Sparse
Attention with Antidiagonal Scoring", 2025).

The causal score matrix ``S = Q K^T / sqrt(d)`` is cut into ``B x B`` tiles
(``B = block``) and, inside them, into ``s x s`` cells (``s = stride``, which
divides ``B``). Each cell ``(a, b)`` is scored by the sum of its antidiagonal::

    A(a, b) = sum_{i=0}^{s-1} S[s a + s - 1 - i, s b + i]

(every row and every column of the cell is hit once, so a vertical or a slash
line through the cell is never missed). The antidiagonal sums are normalised
per cell row like attention, with the causal rule at cell level (``b <= a``)::

    P(a, :) = softmax(A(a, :) / s)

and summed over each tile: ``T(r, c) = sum_{a in tile row r, b in tile column c} P(a, b)``.
Each query block ``r`` keeps the fewest tiles, in descending ``T(r, c)`` order,
whose mass reaches ``threshold * sum_c T(r, c)``, then attends them exactly.

Conventions (checked against the authors' ``xattn_estimate``): the reshape
takes query rows in reverse order within a cell (their "inverse" mode), the
cell scores are divided by ``stride`` before the softmax, cells holding only
padding keys are masked and padding query cells contribute nothing; the
diagonal tile and tile 0 are always kept and count toward the threshold (a
query always sees itself and the attention sink). One layout per query head
(a GQA group's heads choose alone). The estimate runs in the input dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..builders.estimated_sparse import Estimator, block_count, keep_by_cumulative_mass, register_estimated_sparse
from ..kernels.positions import repeat_kv
from ..params import Param

PAPER = "XAttention: Block Sparse Attention with Antidiagonal Scoring"


def _check(*, block, stride, threshold):
    if block % stride:
        raise ValueError(f"stride must divide block, got block={block}, stride={stride}")


def _cells(x: torch.Tensor, stride: int, reverse: bool) -> torch.Tensor:
    """``(B, H, ceil(n / stride), stride * D)``: each cell's rows side by side (reversed for queries), a last,
    shorter cell zero-padded. Keys in natural order are a view of ``x`` when ``stride`` divides its length."""
    B, H, n, D = x.shape
    if n % stride:
        x = F.pad(x, (0, 0, 0, -n % stride))
    cells = x.reshape(B, H, -1, stride, D)
    return (cells.flip(3) if reverse else cells).flatten(3)


def antidiagonal_tiles(q, k, *, scale, block, stride, chunk: int | None = None, budget: int = 1 << 22) -> torch.Tensor:
    """``T(r, c)`` for every tile, ``(B, H, R, R)``, in chunks of cell rows against the cells up to their last:
    ``chunk`` cell rows at a time (default: about ``budget`` scores per chunk, whole tile rows).

    Only the real cells are scored (cells of padding alone have no mass), so q and k are never padded: a chunk
    of queries is cut into cells on its own and the keys are cells in place, a last, shorter cell padded alone.
    A GQA group's query heads are scored against their kv head together."""
    B, H, N, _ = q.shape
    Hkv = k.shape[1]
    R = block_count(N, block)
    per_tile = block // stride
    real_cells = -(-N // stride)
    whole = N // stride
    kc = _cells(k[:, :, : whole * stride], stride, False).transpose(-1, -2)  # the whole cells, in place
    last = _cells(k[:, :, whole * stride:], stride, False).transpose(-1, -2) if whole < real_cells else None
    out = []
    chunk = budget // max(1, B * H * real_cells) if chunk is None else chunk
    step = max(per_tile, chunk // per_tile * per_tile)
    for a0 in range(0, real_cells, step):
        a1 = min(real_cells, a0 + step)
        a = torch.arange(a0, a1, device=q.device)
        qc = _cells(q[:, :, a0 * stride: a1 * stride], stride, True).unflatten(1, (Hkv, H // Hkv)).flatten(2, 3)
        scores = qc @ kc[..., :a1]
        if a1 > whole:  # the last, shorter cell, zero-padded alone
            scores = torch.cat([scores, qc @ last], dim=-1)
        scores = scores.view(B, H, a1 - a0, a1) * (scale / stride)
        p = torch.softmax(scores.masked_fill(torch.arange(a1, device=q.device) > a[:, None], float("-inf")), dim=-1)
        p = F.pad(p, (0, -a1 % per_tile, 0, -(a1 - a0) % per_tile))  # whole tiles: padding cells have no mass
        p = p.reshape(B, H, -1, per_tile, p.shape[-1] // per_tile, per_tile).sum((3, 5))
        out.append(F.pad(p, (0, R - p.shape[-1])))
    return torch.cat(out, dim=2)


def _keep(tiles: torch.Tensor, threshold: float) -> torch.Tensor:
    R = tiles.shape[-1]
    r = torch.arange(R, device=tiles.device)
    allowed = r[None, :] <= r[:, None]
    forced = (r[None, :] == r[:, None]) | (r[None, :] == 0)
    return keep_by_cumulative_mass(tiles, threshold * tiles.sum(-1), forced.expand_as(tiles), allowed.expand_as(tiles))


def xattention_layout(q, k, *, scale, block, stride, threshold) -> torch.Tensor:
    _check(block=block, stride=stride, threshold=threshold)
    return _keep(antidiagonal_tiles(q, k, scale=scale, block=block, stride=stride), threshold)


def reference_layout(q, k, *, scale, block, stride, threshold) -> torch.Tensor:
    """The layout from the equations: materialised float64 scores, antidiagonals read cell by cell."""
    B, H, N, _ = q.shape
    R = block_count(N, block)
    n = R * block
    s = torch.zeros(B, H, n, n, dtype=torch.float64, device=q.device)
    s[:, :, :N, :N] = (q.double() @ repeat_kv(k, H).double().transpose(-1, -2)) * scale
    cells = n // stride
    A = torch.zeros(B, H, cells, cells, dtype=torch.float64, device=q.device)
    for i in range(stride):
        A += s[:, :, stride - 1 - i::stride, i::stride]
    a = torch.arange(cells, device=q.device)
    allowed = (a[None, :] <= a[:, None]) & (a[None, :] * stride < N)
    P = torch.softmax((A / stride).masked_fill(~allowed, float("-inf")), dim=-1) * (a * stride < N)[:, None]
    T = P.reshape(B, H, R, block // stride, R, block // stride).sum((3, 5))
    keep = torch.zeros(B, H, R, R, dtype=torch.bool, device=q.device)
    for b in range(B):
        for h in range(H):
            for r in range(R):
                row = T[b, h, r, : r + 1]
                kept = {0, r}
                mass = sum(float(row[c]) for c in kept)
                for c in sorted(set(range(r + 1)) - kept, key=lambda c: (-float(row[c]), c)):
                    if mass >= threshold * float(row.sum()):
                        break
                    kept.add(c)
                    mass += float(row[c])
                keep[b, h, r, sorted(kept)] = True
    return keep


register_estimated_sparse(
    name="xattention",
    paper=PAPER,
    estimator=Estimator(xattention_layout, reference_layout),
    params={"block": Param(128, int, "tokens per tile (query and key blocks)", low=1),
            "stride": Param(8, int, "cell size of the antidiagonal scoring; divides block", low=1),
            "threshold": Param(0.9, float, "attention mass each query block keeps", low=0.0, high=1.0, low_open=True)},
    test_params={"block": 16, "stride": 4, "threshold": 0.7},
    check=_check,
    summary="prefill: tiles kept by a cumulative threshold on antidiagonal-sum scores, attended exactly",
    complexity="O(N^2 d / stride) estimate + O(kept tiles B^2 d)",
)
