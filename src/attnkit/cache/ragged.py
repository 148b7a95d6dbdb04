"""One layer's kept keys and values when the heads keep different numbers of tokens: :class:`RaggedKV`.

Head-wise policies (:class:`~attnkit.cache.AdaKV`, :class:`~attnkit.cache.RazorAttention`)
keep ``count[b, h]`` tokens in row ``(b, h)``, a different number per row.
The rows are **packed** one after another in flat buffers: keys ``(S, D)``,
values ``(S, Dv)``, int32 positions ``(S,)`` and, when a policy merged tokens,
a float32 log-multiplicity per slot ``(S,)``. Row ``r`` owns slots
``start[r] .. start[r] + cap[r]``, of which the first ``count[r]`` are used;
the rest is room for the next appends. So the memory is

    sum_r cap[r] * (bytes of a key + a value + 4 [+ 4])  +  3 int64 per row,

the kept tokens themselves plus the spare room, not a full-length buffer or a
mask over one. A long row does not make the short rows pay for its length.

Reading (``k``, ``v``, ``pos``) gathers the rows into a padded
``(B, Hkv, M, D)`` tensor, ``M = max(count)``, with the padding slots at
position ``PAD`` (beyond every query, so the causal visibility mask
:func:`attnkit.cache.scores.attend` builds from positions hides them): decode
is still one attention call per layer per step, over a transient copy of
the layer's keys that lives for that call only.

Merged tokens (RazorAttention's compensation token stands for ``n`` dropped
ones) carry ``bias = log n``: attention adds it to their score, so the token
weighs as ``n`` copies of itself.

Appends write each row's new tokens after its used slots, in place when the
row has room and nothing was written there since this value was made (the
same value rule as :class:`~attnkit.cache.store.LayerKV`); otherwise the
rows are re-packed with ``GROWTH`` times their capacity (amortised O(1)).
"""
from __future__ import annotations

import torch

from .store import GROWTH

PAD = torch.iinfo(torch.int32).max


class _Packed:
    def __init__(self, k, v, pos, bias, start, cap):
        self.k, self.v, self.pos, self.bias, self.start, self.cap = k, v, pos, bias, start, cap
        self.version = 0


class RaggedKV:
    """Rows of different lengths, packed. ``count (B, Hkv)`` int64: tokens each row keeps."""

    ragged = True

    def __init__(self, packed: _Packed, count: torch.Tensor, length: int, prompt: int, version: int = 0):
        self._packed, self.count, self.length, self.prompt, self._version = packed, count, length, prompt, version
        self.used = int(count.max())  # the padded read length
        self.score = None

    @staticmethod
    def pack(k, v, pos, count, length: int, prompt: int, room: int, bias=None) -> "RaggedKV":
        """Rows ``k (B, Hkv, M, D)``, ``v``, ``pos (B, Hkv, M)`` whose first ``count[b, h]`` slots are kept, packed
        with ``room`` spare slots per row (an int, or ``(B, Hkv)``)."""
        B, Hkv, M = pos.shape
        count = count.to(torch.int64)
        cap = (count + room).flatten().to(torch.int64)
        start = torch.cumsum(cap, 0) - cap
        total = int(cap.sum())
        valid = (torch.arange(M, device=pos.device) < count[..., None]).flatten(0, 1)  # (R, M)
        dest = (start[:, None] + torch.arange(M, device=pos.device))[valid]

        def flat(t, fill=None):
            if t is None:
                return None
            out = t.new_empty(total, *t.shape[3:]) if fill is None else t.new_full((total, *t.shape[3:]), fill)
            out[dest] = t.flatten(0, 1)[valid]
            return out

        packed = _Packed(flat(k), flat(v), flat(pos, PAD), flat(bias, 0.0), start, cap)
        return RaggedKV(packed, count, length, prompt)

    # reading -------------------------------------------------------------
    def _slots(self):
        """``(index (B, Hkv, M) into the flat buffers, valid (B, Hkv, M))``."""
        p = self._packed
        ar = torch.arange(self.used, device=p.start.device)
        valid = ar < self.count[..., None]
        index = torch.where(valid, p.start.view_as(self.count)[..., None] + ar, p.start.view_as(self.count)[..., None])
        return index, valid

    def _read(self, flat, fill):
        index, valid = self._slots()
        out = flat[index]
        mask = valid if out.ndim == 3 else valid[..., None]
        return out.masked_fill(~mask, fill) if fill is not None else out

    @property
    def k(self) -> torch.Tensor:
        return self._read(self._packed.k, 0)

    @property
    def v(self) -> torch.Tensor:
        return self._read(self._packed.v, 0)

    @property
    def pos(self) -> torch.Tensor:
        return self._read(self._packed.pos, PAD)

    @property
    def bias(self):
        """``(B, Hkv, M)`` float32 log-multiplicities, or ``None`` if no token was merged."""
        return None if self._packed.bias is None else self._read(self._packed.bias, 0.0)

    def nbytes(self) -> int:
        """Bytes of the kept tokens (keys, values, positions, biases) and the row table."""
        p, kept = self._packed, int(self.count.sum())
        per = sum(t[:1].numel() * t.element_size() for t in (p.k, p.v, p.pos, p.bias) if t is not None)
        return kept * per + 3 * 8 * self.count.numel()

    def allocated_bytes(self) -> int:
        p = self._packed
        return sum(t.numel() * t.element_size() for t in (p.k, p.v, p.pos, p.bias) if t is not None) + \
            3 * 8 * self.count.numel()

    def numel(self) -> int:
        kept = int(self.count.sum())
        return kept * (self._packed.k.shape[-1] + self._packed.v.shape[-1])

    def with_score(self, score) -> "RaggedKV":
        return self

    def check_shape(self, k, v) -> None:
        have = (tuple(self.count.shape), self._packed.k.shape[-1], self._packed.v.shape[-1], self._packed.k.dtype)
        if (tuple(k.shape[:2]), k.shape[3], v.shape[3], k.dtype) != have:
            raise ValueError(f"this cache layer holds (batch, kv_heads) = {have[0]}, head dims {have[1:3]} ({have[3]}); "
                             f"got keys {tuple(k.shape)} and values {tuple(v.shape)} ({k.dtype}): a cache belongs to "
                             "one model, batch and dtype; make a new one")

    # writing -------------------------------------------------------------
    def append(self, k: torch.Tensor, v: torch.Tensor, reserve: int = 0) -> "RaggedKV":
        """The value with ``k``, ``v`` ``(B, Hkv, n, D)`` appended to every row at positions ``length ..``."""
        self.check_shape(k, v)
        n = k.shape[2]
        p = self._packed
        count = self.count.flatten()
        if p.version != self._version or bool((count + n > p.cap).any()):
            p = self._regrow(n)
        dest = (p.start + count)[:, None] + torch.arange(n, device=count.device)
        p.k[dest] = k.flatten(0, 1)
        p.v[dest] = v.flatten(0, 1)
        p.pos[dest] = torch.arange(self.length, self.length + n, device=count.device, dtype=torch.int32)
        if p.bias is not None:
            p.bias[dest] = 0.0
        p.version += 1
        return RaggedKV(p, self.count + n, self.length + n, self.prompt, p.version)

    def _regrow(self, n: int) -> _Packed:
        room = torch.clamp((GROWTH - 1) * (self.count + n), min=n).ceil().to(torch.int64)
        return RaggedKV.pack(self.k, self.v, self.pos, self.count, self.length, self.prompt, room, self.bias)._packed
