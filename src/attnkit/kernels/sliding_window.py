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
tile and adds dK, dV into the slab's keys (``baddbmm_`` straight into the
returned gradients, the padding's rows left out). The row terms ride in the
matmuls (:mod:`~attnkit.kernels.row_terms`: the padded keys and values carry a
column of ones). A tile's query rows (and, backward, its ``dO`` rows) are
copied into one small buffer per step, never the whole sequence at once.
Scores are in base 2 (on CPU ``exp`` takes a slow path on masked or far-below-maximum
scores; ``exp2`` runs at one speed). Memory is O(N)
plus one tile's scores.

A gated branch (:func:`add_gated_sliding_window`, ``into += g * O`` with one
gate per query row, as NSA mixes its branches) folds the gate into the
kernel: the forward adds each tile's gated rows into ``into`` as it writes
them, and the backward scales ``dO`` by the gate as it copies the rows. The
gate's gradient ``rowsum(dO * O)`` is the row term the backward needs anyway,
``delta = rowsum(g dO * O) = g * rowsum(dO * O)``, so the gate costs no pass of
its own and no output-sized product ``g * dO`` (the ungated output is kept for the
backward, as without a gate).
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
    _check(q, k, v, window, tile)
    return _SlidingWindow.apply(q, k, v, None, None, window, scale, tile)


def add_gated_sliding_window(into, gate, q, k, v, *, window: int, scale: float, tile: int = TILE) -> torch.Tensor:
    """``into += gate[..., None] * sliding_window_attention(q, k, v, ...)``, in place, returning ``into
    (B, H, Nq, Dv)`` (an autograd in-place step: ``into`` may be an intermediate result, not a leaf that requires
    grad); ``gate (B, H, Nq)`` weighs each query's row (a branch gate, as in a gated sum of attention branches). The kernel applies the gate as it writes each tile and, backward, as it lays out ``dO``, and takes
    the gate's gradient with the row term it needs anyway, so the gated branch costs no tensor the size of the
    output beyond the ungated one it keeps for the backward."""
    _check(q, k, v, window, tile)
    B, H, Nq, _ = q.shape
    if gate.shape != (B, H, Nq) or into.shape != (B, H, Nq, v.shape[3]):
        raise ValueError(f"gate {tuple(gate.shape)}, into {tuple(into.shape)}: expected gate (B, H, Nq) = "
                         f"{(B, H, Nq)} and into (B, H, Nq, Dv) = {(B, H, Nq, v.shape[3])}")
    return _SlidingWindow.apply(q, k, v, gate, into, window, scale, tile)


def _check(q, k, v, window, tile):
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    if (k.ndim != 4 or v.ndim != 4 or (k.shape[0], k.shape[3]) != (B, D) or v.shape[:3] != k.shape[:3]
            or H % k.shape[1] or Nq > Nk):
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: expected q (B, H, Nq, D), "
                         f"k and v (B, Hkv, Nk, D) and (B, Hkv, Nk, Dv) with Hkv dividing H and Nq <= Nk")
    for name, value in (("window", window), ("tile", tile)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


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

    def rows_buffer(self, x, E):
        """An empty ``(B Hkv, g T, E)`` buffer for one tile's rows, the query heads of a kv group stacked."""
        return x.new_empty(self.B * self.Hkv, self.g * self.T, E)

    def by_group(self, x):
        """``x (B, H, N, ...)`` as ``(B, Hkv, g, N, ...)`` (a view), made once per call so that each tile only
        slices it."""
        return x.unflatten(1, (self.Hkv, self.g))

    def buffer_rows(self, buffer):
        """A :meth:`rows_buffer` as ``(B, Hkv, g, T, E)`` (a view)."""
        return buffer.view(self.B, self.Hkv, self.g, self.T, -1)

    def rows(self, t):
        """Tile ``t``'s query positions and how many of its ``T`` rows are inside the sequence."""
        start = t * self.T
        return slice(start, start + self.T), min(self.T, self.N - start)

    def take(self, buffer, x, t, factor, term=None):
        """Write tile ``t``'s rows of ``x`` times ``factor`` (a number, or per row ``(B, Hkv, g, N, 1)``) into the
        first ``E`` columns of ``buffer`` and ``term (B, Hkv, g, N)`` into its column ``E``; ``x (B, Hkv, g, N, E)``
        is a :meth:`by_group` view, ``buffer (B, Hkv, g, T, >= E)`` a :meth:`buffer_rows` one. Rows past ``N`` are
        zeros."""
        E, (rows, valid) = x.shape[-1], self.rows(t)
        if valid < self.T:
            buffer[:, :, :, valid:] = 0
            buffer = buffer[:, :, :, :valid]
        if isinstance(factor, torch.Tensor):
            factor = factor[:, :, :, rows]
        torch.mul(x[:, :, :, rows], factor, out=buffer[..., :E])
        if term is not None:
            buffer[..., E].copy_(term[:, :, :, rows])

    def put(self, out, t, buffer, factor):
        """Write tile ``t``'s rows of ``buffer`` times ``factor`` (a number, or per row ``(B Hkv, g T, 1)``) into
        ``out``; ``buffer (B, Hkv, g, T, E)`` is a :meth:`buffer_rows` view, ``out (B, Hkv, g, N, E)`` a
        :meth:`by_group` one. The rows past ``N`` are left out."""
        rows, valid = self.rows(t)
        if isinstance(factor, torch.Tensor):
            factor = factor.view(self.B, self.Hkv, self.g, self.T, 1)[:, :, :, :valid]
        torch.mul(buffer[:, :, :, :valid], factor, out=out[:, :, :, rows])

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

    def inside(self, t):
        """Tile ``t``'s slab keys that are keys of the sequence: ``(slab columns, rows of flat keys)``."""
        lo = self.offset + (t - self.m) * self.T
        a, b = max(-lo, 0), self.S - max(lo + self.S - self.Nk, 0)
        return slice(a, b), slice(lo + a, lo + b)

    def masker(self, s):
        """The masking of tile ``t``'s base-2 scores in the buffer ``s (B Hkv, g T, S)``, in place: the table's
        hidden pairs, and the padding keys left of the sequence (in the first tiles, when the window reaches back
        past key 0). The views are made once."""
        view = s.view(s.shape[0], self.g, self.T, self.S)
        parts = [(view[..., a:b], self.hidden[:, a:b]) for a, b in self.masked_columns]
        padding = self.m * self.T - self.offset  # slab keys left of key 0 in tile 0

        def mask(t):
            for scores, hidden in parts:
                scores.masked_fill_(hidden, float("-inf"))
            if padding > t * self.T:
                s[..., : padding - t * self.T] = float("-inf")
        return mask


class _SlidingWindow(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, gate, into, window, scale, tile):
        tiles = _Tiles(q, k, v, window, tile)
        kf, vf = tiles.flat(k), tiles.flat(v)
        out = q.new_empty(tiles.B, tiles.H, tiles.N, tiles.Dv)
        qt = tiles.rows_buffer(q, tiles.D)
        lse = q.new_empty(tiles.n, *qt.shape[:2])
        s = tiles.rows_buffer(q, tiles.S)
        o = tiles.rows_buffer(q, tiles.Dv)
        mask = tiles.masker(s)
        q_rows, out_rows = tiles.by_group(q), tiles.by_group(out)
        qt_rows, o_rows = tiles.buffer_rows(qt), tiles.buffer_rows(o)
        if into is not None:
            into_rows, gate_rows = tiles.by_group(into), tiles.by_group(gate)[..., None]
        lowest = floor(q.dtype)
        for t in range(tiles.n):
            tiles.take(qt_rows, q_rows, t, scale * LOG2E)
            torch.bmm(qt, tiles.slab_of(kf, t).transpose(1, 2), out=s)
            mask(t)
            top = s.amax(-1, keepdim=True).clamp_(min=lowest)
            p = s.sub_(top).exp2_()
            total = p.sum(-1, keepdim=True)
            torch.bmm(p, tiles.slab_of(vf, t), out=o)
            tiles.put(out_rows, t, o_rows, total.reciprocal())
            if into is not None:
                rows = tiles.rows(t)[0]
                into_rows[:, :, :, rows].addcmul_(out_rows[:, :, :, rows], gate_rows[:, :, :, rows])
            torch.add(top, total.log2_(), out=lse[t].unsqueeze(-1))
        ctx.save_for_backward(q, k, v, out, lse, gate)
        ctx.tiles, ctx.scale = tiles, scale
        if into is None:
            return out
        ctx.mark_dirty(into)
        return into

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, gate = ctx.saved_tensors
        tiles = ctx.tiles
        D, Dv = tiles.D, tiles.Dv
        kp, vp = tiles.keys_with_ones(k), tiles.keys_with_ones(v)
        delta = row_dot(grad_out, out)  # rowsum(dO O), the gate's gradient when there is one
        d_gate = None
        if gate is not None:
            d_gate, delta = delta, delta * gate  # the branch's own dO is gate * dO
        factor = 1.0 if gate is None else tiles.by_group(gate)[..., None]
        minus_delta = tiles.by_group(delta.neg_() if gate is None else delta.neg())
        dq = q.new_empty(q.shape)
        dk, dv = q.new_zeros(k.shape), q.new_zeros(v.shape)
        dkf, dvf = tiles.flat(dk), tiles.flat(dv)
        qt, dot = tiles.rows_buffer(q, D + 1), tiles.rows_buffer(q, Dv + 1)  # [q, -lse] and [dO, -delta]
        dq_tile = tiles.rows_buffer(q, D)
        s = tiles.rows_buffer(q, tiles.S)
        dp = torch.empty_like(s)
        mask = tiles.masker(s)
        q_rows, do_rows, dq_rows = tiles.by_group(q), tiles.by_group(grad_out), tiles.by_group(dq)
        qt_rows, dot_rows, dq_tile_rows = tiles.buffer_rows(qt), tiles.buffer_rows(dot), tiles.buffer_rows(dq_tile)
        qt_q, qt_lse, dot_do = qt[:, :, :D], qt[:, :, D], dot[:, :, :Dv]
        for t in range(tiles.n):
            torch.neg(lse[t], out=qt_lse)
            tiles.take(qt_rows, q_rows, t, ctx.scale * LOG2E)
            tiles.take(dot_rows, do_rows, t, factor, minus_delta)
            slab, (cols, keys) = tiles.slab(t), tiles.inside(t)
            torch.bmm(qt, kp[:, slab].transpose(1, 2), out=s)  # s - lse
            mask(t)
            p = s.exp2_()
            dvf[:, keys].baddbmm_(p[:, :, cols].transpose(1, 2), dot_do)
            ds = p.mul_(torch.bmm(dot, vp[:, slab].transpose(1, 2), out=dp))  # P (dP - delta)
            torch.bmm(ds, kp[:, slab, :D], out=dq_tile)
            tiles.put(dq_rows, t, dq_tile_rows, ctx.scale)
            dkf[:, keys].baddbmm_(ds[:, :, cols].transpose(1, 2), qt_q)
        return dq, dk.div_(LOG2E), dv, d_gate, grad_out if ctx.needs_input_grad[4] else None, None, None, None
