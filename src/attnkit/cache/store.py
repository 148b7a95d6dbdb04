"""One layer's kept keys and values: :class:`LayerKV`, a value.

Keys and values are stored per (batch, kv head) row, compacted: row ``r``
holds the tokens it kept in slots ``0 .. used - 1`` of a buffer
``(B, Hkv, capacity, D)``, with each slot's sequence position in ``pos``
(int32). Every row of a layer keeps the same number of tokens (the policies
give one budget per layer), so the kept keys are the buffer slice
``[:, :, :used]`` itself: no mask over a full-length buffer, no gather before
attention. Evicting tokens gathers the kept slots into a new buffer sized to
the budget (plus room for the next appends).

Appends are amortised O(1): a buffer has spare capacity (grown by 1.5x when it
runs out) and new tokens are written after the used slots. The buffer is
shared between the value that wrote it and the values derived from it; a
value only ever reads its own ``used`` slots, and a write goes in place only
when nothing was written past this value's slots yet (else the buffer is
copied first). So a returned ``LayerKV`` never changes because of a later
call: it is a value, like every attnkit state.

``length`` is the number of tokens the layer has consumed, which is also the
position of the next token: RoPE offsets follow it, not the kept count.

A prompt prefilled in chunks is declared up front (``LayerKV.empty(prompt)``):
every call up to ``prompt`` tokens is then part of the prefill, and the
first append reserves room for the budget plus a chunk so that the buffer
never grows while the prompt streams in. :meth:`LayerKV.compact` evicts in
place, without a second buffer, for an owner that holds the only reference
(the transformers cache, which is mutable).
"""
from __future__ import annotations

import torch

GROWTH = 1.5
COMPACT_BLOCK = 256  # slots moved at a time by an in-place eviction


class _Buffer:
    """Storage shared by the values derived from one another; ``tail`` = slots written."""

    def __init__(self, k, v, pos, tail: int):
        self.k, self.v, self.pos, self.tail = k, v, pos, tail


class LayerKV:
    """Kept keys ``k (B, Hkv, L, D)``, values ``v (B, Hkv, L, Dv)``, positions ``pos (B, Hkv, L)``.

    ``length``: tokens consumed so far. ``score``: the policy's running score of
    each kept token (``None`` when the policy keeps none), ``prompt``: length of
    the first call (the prompt), which fixes a ratio budget.
    """

    def __init__(self, buffer: _Buffer | None, used: int, length: int, score=None, prompt: int = 0,
                 appended: int = 0):
        self._buffer, self.used, self.length, self.score, self.prompt = buffer, used, length, score, prompt
        self.appended = appended  # tokens the last append added

    @staticmethod
    def empty(prompt: int = 0) -> "LayerKV":
        """An empty layer; ``prompt``: the prompt's length if it will arrive in several calls."""
        return LayerKV(None, 0, 0, prompt=prompt)

    # reading -------------------------------------------------------------
    @property
    def k(self) -> torch.Tensor:
        return self._buffer.k[:, :, : self.used]

    @property
    def v(self) -> torch.Tensor:
        return self._buffer.v[:, :, : self.used]

    @property
    def pos(self) -> torch.Tensor:
        return self._buffer.pos[:, :, : self.used]

    @property
    def capacity(self) -> int:
        return 0 if self._buffer is None else self._buffer.k.shape[2]

    def nbytes(self) -> int:
        """Bytes of the kept keys, values and positions (what the cache holds for this layer)."""
        if self._buffer is None:
            return 0
        return sum(t[:, :, : self.used].numel() * t.element_size() for t in (self._buffer.k, self._buffer.v, self._buffer.pos))

    def allocated_bytes(self) -> int:
        """Bytes of the buffers, spare capacity included (the resident memory)."""
        if self._buffer is None:
            return 0
        return sum(t.numel() * t.element_size() for t in (self._buffer.k, self._buffer.v, self._buffer.pos))

    def numel(self) -> int:
        return 0 if self._buffer is None else self.k.numel() + self.v.numel()

    def check_shape(self, k: torch.Tensor, v: torch.Tensor) -> None:
        if self._buffer is None:
            return
        have = (self._buffer.k.shape[:2], self._buffer.k.shape[3], self._buffer.v.shape[3])
        if (k.shape[:2], k.shape[3], v.shape[3]) != have or k.dtype != self._buffer.k.dtype:
            raise ValueError(
                f"this cache layer holds keys (batch, kv_heads, *, head_dim) = "
                f"{tuple(have[0]) + ('*', have[1])} and values of dim {have[2]} ({self._buffer.k.dtype}); got keys "
                f"{tuple(k.shape)} and values {tuple(v.shape)} ({k.dtype}): a cache belongs to one model, "
                "batch and dtype; make a new one"
            )

    # writing -------------------------------------------------------------
    def append(self, k: torch.Tensor, v: torch.Tensor, reserve: int = 0) -> "LayerKV":
        """The value with ``k``, ``v`` ``(B, Hkv, n, D)`` appended at positions ``length ..`` (``reserve``: slots a
        new buffer gets at least)."""
        self.check_shape(k, v)
        n, used = k.shape[2], self.used
        pos = torch.arange(self.length, self.length + n, device=k.device, dtype=torch.int32)
        pos = pos.expand(k.shape[0], k.shape[1], n)
        buf = self._buffer
        if buf is None or used + n > buf.k.shape[2] or buf.tail != used:
            capacity = max(used + n, int(GROWTH * self.capacity), reserve)
            buf = _Buffer(*(_resized(t, used, capacity) for t in self._parts(k, v, pos)), tail=used)
        buf.k[:, :, used : used + n] = k
        buf.v[:, :, used : used + n] = v
        buf.pos[:, :, used : used + n] = pos
        buf.tail = used + n
        return LayerKV(buf, used + n, self.length + n, self.score, self.prompt or n, n)

    def _parts(self, k, v, pos):
        if self._buffer is not None:
            return self._buffer.k, self._buffer.v, self._buffer.pos
        return k[:, :, :0], v[:, :, :0], pos[:, :, :0]

    def keep(self, index: torch.Tensor, score=None, room: int = 1) -> "LayerKV":
        """The value that keeps slots ``index (B, Hkv, K)`` (ascending), in a new buffer of ``K + room`` slots."""
        kept = index.shape[-1]

        def gather(t):
            out = t.new_empty(*t.shape[:2], kept + room, *t.shape[3:])
            out[:, :, :kept] = gather_slots(t[:, :, : self.used], index)
            return out

        buf = _Buffer(gather(self._buffer.k), gather(self._buffer.v), gather(self._buffer.pos), tail=kept)
        return LayerKV(buf, kept, self.length, score, self.prompt)

    def compact(self, index: torch.Tensor, score=None) -> "LayerKV":
        """Keep slots ``index (B, Hkv, K)`` (ascending) by moving them to the front of this buffer, in place.

        Only for an owner that holds the only reference to this value and its buffer: the values that
        share the buffer see it change. Moves ``COMPACT_BLOCK`` slots at a time: slot ``i`` receives
        slot ``index[i] >= i``, so a block never reads what an earlier block wrote."""
        buf, kept = self._buffer, index.shape[-1]
        if buf.tail != self.used:
            raise ValueError("compact: this buffer was written past this value's slots; it is not owned alone")
        for lo in range(0, kept, COMPACT_BLOCK):
            idx = index[..., lo : lo + COMPACT_BLOCK]
            for t in (buf.k, buf.v, buf.pos):
                t[:, :, lo : lo + idx.shape[-1]] = gather_slots(t[:, :, : self.used], idx)
        buf.tail = kept
        return LayerKV(buf, kept, self.length, score, self.prompt)

    def with_score(self, score) -> "LayerKV":
        return LayerKV(self._buffer, self.used, self.length, score, self.prompt, self.appended)


def same_storage(a, b) -> bool:
    """Whether the layer stores ``a`` and ``b`` hold their tokens in one buffer: going from one to the other
    copied nothing."""
    held = _storage(a)
    return a is b or (held is not None and held is _storage(b))


def _storage(store):
    """What holds a store's tokens: a :class:`LayerKV`'s buffer, a ragged layer's pool of pages, a quantised
    layer's packed codes (None while it holds none)."""
    for name in ("_buffer", "_pool", "_packed"):
        if getattr(store, name, None) is not None:
            return getattr(store, name)
    return None


def gather_slots(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Each row's slots ``index (B, Hkv, K)`` of ``t (B, Hkv, L)`` or ``(B, Hkv, L, D)``."""
    return t.gather(2, index if t.ndim == 3 else index[..., None].expand(-1, -1, -1, t.shape[-1]))


def _resized(t: torch.Tensor, used: int, capacity: int) -> torch.Tensor:
    out = t.new_empty(*t.shape[:2], capacity, *t.shape[3:])
    out[:, :, :used] = t[:, :, :used]
    return out
