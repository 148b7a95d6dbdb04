"""Exact causal sliding-window attention: each query attends to the last ``window`` keys, its own included.

Queries sit at the end of the keys (bottom-right aligned, as everywhere in
attnkit: with ``Nq <= Nk``, query ``i`` is at position ``Nk - Nq + i``), so the
same kernel serves self-attention and new queries against a KV cache.

The queries are cut into tiles of ``tile`` consecutive tokens. Every key a tile
needs lies in one *slab* of ``(m + 1) * tile`` consecutive keys, the tile's own
and the ``m = ceil((window - 1) / tile)`` tiles before it, and where a key sits
in the slab relative to a query depends only on their places in the tile, not
on the tile: one ``(tile, slab)`` table of allowed pairs serves every tile
(the keys left of the sequence are zero padding, masked in the first ``m``
tiles only). A slab is a plain slice of the keys, so a tile's scores are one
batched matmul over the batch and kv heads, the query heads of a kv group
stacked as rows; nothing is gathered. The forward reads the slabs inside the
sequence in place and copies only those that reach past either end, with their
zero padding (the first ``m`` and the last); the backward pads k and v once.
Each row's keys are all in its slab, so the forward needs one pass: softmax and
``P V`` per tile, no running maximum across steps. Only the columns of the slab that some query of the tile
may not see are masked, with ``masked_fill`` (a NaN or infinite key outside a
query's window stays masked).

The backward is FlashAttention-2's: the forward keeps the output and the row
log-sum-exp; the backward recomputes each tile's probabilities, writes dQ per
tile and adds dK, dV into the slab's keys. The row terms ride in the matmuls
(:mod:`~attnkit.kernels.row_terms`: the padded keys and values carry a column of
ones). Scores are in base 2 (``exp2`` is faster than ``exp`` on CPU). Memory is
O(N) plus one tile's scores.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .online_softmax import floor
from .row_terms import row_dot

LOG2E = 1.4426950408889634
TILE = 64


def sliding_window_attention(q, k, v, *, window: int, scale: float, tile: int = TILE) -> torch.Tensor:
    """Causal attention of ``q (B, H, Nq, D)`` over the last ``window`` of ``k, v (B, Hkv, Nk, D/Dv)``
    (the query at position ``t`` sees keys ``t - window + 1 .. t``). ``tile`` (queries per step) is an
    execution knob."""
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    if (k.ndim != 4 or v.ndim != 4 or (k.shape[0], k.shape[3]) != (B, D) or v.shape[:3] != k.shape[:3]
            or H % k.shape[1] or Nq > Nk):
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: expected q (B, H, Nq, D), "
                         f"k and v (B, Hkv, Nk, D) and (B, Hkv, Nk, Dv) with Hkv dividing H and Nq <= Nk")
    for name, value in (("window", window), ("tile", tile)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    return _SlidingWindow.apply(q, k, v, window, scale, tile)


def matmul_shapes(q, k, v, *, window: int, tile: int = TILE) -> list[tuple[int, int, int, int]]:
    """The kernel's batched matmuls, one ``(batch * kv heads, query rows, slab keys, head_dim)`` per tile: two of
    these sizes forward and five backward (to time the kernel against its matmuls alone)."""
    tiles = _Tiles(q, k, v, window, tile)
    return [(tiles.B * tiles.Hkv, tiles.g * tiles.T, tiles.S, tiles.D)] * tiles.n


class _Tiles:
    """The tiling: sizes, the shared table of allowed (query, slab key) pairs and the columns it masks."""

    def __init__(self, q, k, v, window, tile):
        self.B, self.H, self.N, self.D = q.shape
        self.Hkv, self.Nk, self.Dv = k.shape[1], k.shape[2], v.shape[3]
        self.offset = self.Nk - self.N  # position of the first query
        window = min(window, self.Nk)  # no query sees further back than key 0
        self.g, self.T = self.H // self.Hkv, max(1, min(tile, self.N))
        tile = self.T
        self.m = -(-(window - 1) // tile)  # tiles before a query's own that its window reaches
        self.S = (self.m + 1) * tile  # keys in a slab
        self.n = -(-self.N // tile)
        # slab key j of a tile is m * T + i - j tokens before query i of the tile
        back = self.m * tile + torch.arange(tile, device=q.device)[:, None] - torch.arange(self.S, device=q.device)
        self.hidden = (back < 0) | (back >= window)  # (T, S)
        seen_by_all = (~self.hidden).all(0).nonzero()
        lo, hi = (int(seen_by_all[0]), int(seen_by_all[-1]) + 1) if seen_by_all.numel() else (self.S, self.S)
        self.masked_columns = [(a, b) for a, b in ((0, lo), (hi, self.S)) if a < b]

    def queries(self, x, scale, term=None):
        """``(B, H, N, E)`` -> ``(n, B Hkv, g T, E + 1)``: times ``scale``, tile by tile, the kv group's query
        heads stacked as rows, zero rows past ``N`` and a last column for a row term: ``term (B, H, N)``, or 0."""
        B, E = x.shape[0], x.shape[3]
        out = x.new_zeros(self.n, B, self.Hkv, self.g, self.T, E + 1)
        target = out.permute(1, 2, 3, 0, 4, 5)  # (B, Hkv, g, n, T, E + 1)
        whole = self.N // self.T
        pieces = [(x.reshape(B, self.Hkv, self.g, self.N, E), target[..., :E], scale)]
        if term is not None:
            pieces.append((term.reshape(B, self.Hkv, self.g, self.N, 1), target[..., E:], 1.0))
        for src, dst, factor in pieces:
            torch.mul(src[:, :, :, : whole * self.T].unflatten(3, (whole, self.T)), factor, out=dst[:, :, :, :whole])
            if whole < self.n:
                torch.mul(src[:, :, :, whole * self.T:], factor, out=dst[:, :, :, whole, : self.N - whole * self.T])
        return out.view(self.n, B * self.Hkv, self.g * self.T, E + 1)

    def put(self, out, t, rows, factor):
        """Write tile ``t``'s rows ``(B Hkv, g T, E)`` times ``factor`` (a number), or divided by it (a tensor
        ``(B Hkv, g T, 1)``), into ``out (B, H, N, E)``; the rows past ``N`` are left out."""
        E, T = out.shape[-1], self.T
        valid = min(T, self.N - t * T)
        target = out.view(self.B, self.Hkv, self.g, self.N, E)[:, :, :, t * T : t * T + valid]
        rows = rows.view(self.B, self.Hkv, self.g, T, E)[:, :, :, :valid]
        if isinstance(factor, torch.Tensor):
            torch.div(rows, factor.view(self.B, self.Hkv, self.g, T, 1)[:, :, :, :valid], out=target)
        else:
            torch.mul(rows, factor, out=target)

    def keys_with_ones(self, x):
        """``(B, Hkv, Nk, E)`` -> ``(B Hkv, m T + Nk + (n T - Nq), E + 1)``: ``m`` tiles of zeros before, zeros
        after up to the last tile's end, and a last column of ones for a row term, written into one buffer."""
        E, start = x.shape[-1], self.m * self.T
        out = x.new_empty(self.B, self.Hkv, start + self.Nk + self.n * self.T - self.N, E + 1)
        out[..., E] = 1
        out[:, :, :start, :E] = 0
        out[:, :, start + self.Nk:, :E] = 0
        out[:, :, start:start + self.Nk, :E] = x
        return out.view(self.B * self.Hkv, -1, E + 1)

    def flat(self, x):
        """``(B, Hkv, Nk, E)`` -> ``(B Hkv, Nk, E)``, unpadded (a view of contiguous ``x``)."""
        return x.reshape(self.B * self.Hkv, self.Nk, x.shape[-1])

    def slab_of(self, x, t):
        """Tile ``t``'s keys from :meth:`flat`'s rows (those of :meth:`keys_with_ones` at :meth:`slab`, without the
        ones): a view when the slab lies inside the sequence, else a copy with the zero rows before key 0 or after
        the last."""
        lo = self.offset + (t - self.m) * self.T
        hi = lo + self.S
        if lo >= 0 and hi <= self.Nk:
            return x[:, lo:hi]
        return F.pad(x[:, max(lo, 0):min(hi, self.Nk)], (0, 0, max(-lo, 0), max(hi - self.Nk, 0)))

    def slab(self, t):
        """Tile ``t``'s keys in :meth:`keys_with_ones`' rows."""
        start = self.offset + t * self.T
        return slice(start, start + self.S)

    def mask(self, s, t):
        """Mask tile ``t``'s base-2 scores ``(B Hkv, g T, S)`` in place: the table's hidden pairs, and the padding
        keys left of the sequence (in the first tiles, when the window reaches back past key 0)."""
        view = s.view(s.shape[0], self.g, self.T, self.S)
        for a, b in self.masked_columns:
            view[..., a:b].masked_fill_(self.hidden[:, a:b], float("-inf"))
        before = self.m * self.T - self.offset - t * self.T
        if before > 0:
            s[..., :before] = float("-inf")


class _SlidingWindow(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, window, scale, tile):
        tiles = _Tiles(q, k, v, window, tile)
        D = tiles.D
        qt = tiles.queries(q, scale * LOG2E)  # its last column 0 in the forward
        kf, vf = tiles.flat(k), tiles.flat(v)
        n, rows = tiles.n, qt.shape[1:3]
        out = q.new_empty(tiles.B, tiles.H, tiles.N, tiles.Dv)
        lse = q.new_empty(n, *rows)
        s = q.new_empty(*rows, tiles.S)
        o = q.new_empty(*rows, tiles.Dv)
        lowest = floor(q.dtype)
        for t in range(n):
            torch.bmm(qt[t, :, :, :D], tiles.slab_of(kf, t).transpose(1, 2), out=s)
            tiles.mask(s, t)
            top = s.amax(-1, keepdim=True).clamp_(min=lowest)
            p = s.sub_(top).exp2_()
            total = p.sum(-1, keepdim=True)
            tiles.put(out, t, torch.bmm(p, tiles.slab_of(vf, t), out=o), total)
            torch.add(top, total.log2_(), out=lse[t].unsqueeze(-1))
        qt[..., D] = lse.neg()
        ctx.save_for_backward(qt, k, v, out)
        ctx.tiles, ctx.scale = tiles, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        qt, k, v, out = ctx.saved_tensors
        tiles = ctx.tiles
        T, D, Dv = tiles.T, tiles.D, tiles.Dv
        kp, vp = tiles.keys_with_ones(k), tiles.keys_with_ones(v)
        dot = tiles.queries(grad_out, 1.0, row_dot(grad_out, out).neg_())  # [dO, -delta]
        dq = qt.new_empty(tiles.B, tiles.H, tiles.N, D)
        dq_tile = qt.new_empty(*qt.shape[1:3], D)
        dkp, dvp = qt.new_zeros(*kp.shape[:2], D), qt.new_zeros(*vp.shape[:2], Dv)
        s = qt.new_empty(*qt.shape[1:3], tiles.S)
        dp = torch.empty_like(s)
        for t in range(tiles.n):
            slab = tiles.slab(t)
            torch.bmm(qt[t], kp[:, slab].transpose(1, 2), out=s)  # s - lse
            tiles.mask(s, t)
            p = s.exp2_()
            dvp[:, slab] += torch.bmm(p.transpose(1, 2), dot[t, :, :, :Dv])
            ds = p.mul_(torch.bmm(dot[t], vp[:, slab].transpose(1, 2), out=dp))  # P (dP - delta)
            tiles.put(dq, t, torch.bmm(ds, kp[:, slab, :D], out=dq_tile), ctx.scale)
            dkp[:, slab] += torch.bmm(ds.transpose(1, 2), qt[t, :, :, :D])
        keys = slice(tiles.m * T, tiles.m * T + tiles.Nk)
        dk = dkp.div_(LOG2E).view(tiles.B, tiles.Hkv, -1, D)[:, :, keys]
        dv = dvp.view(tiles.B, tiles.Hkv, -1, Dv)[:, :, keys]
        return dq, dk, dv, None, None, None
