"""State carried between incremental calls of :func:`attnkit.attention`.

Every state exposes ``length``: the number of key/value tokens consumed so far,
which is also the position offset of the next tokens. Softmax mechanisms carry
a :class:`KVCache` (the keys and values seen so far); recurrent (linear, gated,
delta-rule) mechanisms carry a :class:`RecurrentState`: a few fixed-size
tensors that summarise everything read (for linear attention the matrix
``S = sum_j phi(k_j)^T v_j`` and the normaliser ``z = sum_j phi(k_j)``).
Stateful forms take it as ``initial_state`` and return the final one; see
``docs/design.md`` ("Recurrent-state contract").
"""
from __future__ import annotations

import torch


class AppendBuffer:
    """Tensors that grow together along ``dim``, shared by the states of one decoding branch.

    ``filled`` is the length of the branch's newest state. :meth:`extend` from that
    state writes after it in place (geometric growth: amortised O(1) copies per
    token) and older states keep reading their own prefix, which nothing
    overwrites; extending an older state first copies its prefix into a buffer
    of its own, so two continuations of one state never see each other's tokens.
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...], dim: int):
        self.tensors, self.dim, self.filled = tensors, dim, tensors[0].shape[dim]

    def prefix(self, i: int, n: int) -> torch.Tensor:
        return self.tensors[i].narrow(self.dim, 0, n)

    def extend(self, n: int, new: tuple[torch.Tensor, ...]) -> "AppendBuffer":
        """The buffer holding ``prefix(n)`` followed by ``new``: this one if ``n`` is its newest length, else a copy."""
        total = n + new[0].shape[self.dim]
        if self.filled == n:
            buf = self
            if total > buf.tensors[0].shape[self.dim]:
                capacity = max(2 * buf.tensors[0].shape[self.dim], total, 16)
                buf.tensors = tuple(_grow(t, n, capacity, self.dim) for t in buf.tensors)
        else:  # an older state continued: its prefix, copied once into a buffer with room to grow
            capacity = max(n + n // 2, total, 16)
            buf = AppendBuffer(tuple(_grow(self.tensors[i], n, capacity, self.dim) for i in range(len(new))), self.dim)
        for t, x in zip(buf.tensors, new):
            t.narrow(self.dim, n, x.shape[self.dim]).copy_(x)
        buf.filled = total
        return buf


def _grow(buf: torch.Tensor, used: int, capacity: int, dim: int) -> torch.Tensor:
    shape = list(buf.shape)
    shape[dim] = capacity
    out = buf.new_empty(shape)
    out.narrow(dim, 0, used).copy_(buf.narrow(dim, 0, used))
    return out


class KVCache:
    """Keys and values seen so far: a value that later calls never change.

    The tokens live in an :class:`AppendBuffer`, so appending costs amortised
    O(1) copies while the caller continues from the newest state, and
    continuing twice from one state (beam search, retries, speculative
    decoding) gives two independent answers. When gradients are needed the
    cache concatenates instead, so autograd sees every write.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, *, buffer: AppendBuffer | None = None,
                 length: int | None = None):
        self._buffer = buffer if buffer is not None else AppendBuffer((k, v), dim=2)
        self.length = k.shape[2] if length is None else length

    @property
    def k(self) -> torch.Tensor:
        return self._buffer.prefix(0, self.length)

    @property
    def v(self) -> torch.Tensor:
        return self._buffer.prefix(1, self.length)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> "KVCache":
        """A new state: this one followed by ``k, v``. This state is left as it was."""
        _check_like(self._buffer.tensors, k, v)
        held_k = self._buffer.tensors[0]
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad or held_k.requires_grad):
            return KVCache(torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2))
        n = self.length
        return KVCache(k, v, buffer=self._buffer.extend(n, (k, v)), length=n + k.shape[2])

    def numel(self) -> int:
        return self.k.numel() + self.v.numel()


class ScoredKVCache:
    """A :class:`KVCache` and one learned score per cached key and kv head ``(B, Hkv, N)`` (DMA's deltas,
    SPARSEK's key scores), appended together: a value that later calls never change."""

    def __init__(self, kv: KVCache, scores: torch.Tensor):
        self.kv, self.scores, self.length = kv, scores, kv.length

    @staticmethod
    def extend(state: "ScoredKVCache | None", k: torch.Tensor, v: torch.Tensor, scores: torch.Tensor) -> "ScoredKVCache":
        """``state`` (None: nothing yet) followed by ``k, v`` and their scores, as a new state."""
        if state is None:
            return ScoredKVCache(KVCache(k, v), scores)
        return ScoredKVCache(state.kv.append(k, v), torch.cat([state.scores, scores], dim=2))

    @staticmethod
    def size(batch, heads, kv_heads, seq_len, head_dim, v_dim=None, **_) -> int:
        """Numbers held after ``seq_len`` tokens (a spec's ``state_size``)."""
        return batch * kv_heads * seq_len * (head_dim + (v_dim or head_dim) + 1)

    def numel(self) -> int:
        return self.kv.numel() + self.scores.numel()


class _AroundKVCache:
    """A state that keeps every token in a :class:`KVCache` (``self.cache``) beside data of its own: its length,
    keys and values are the cache's."""

    @property
    def length(self) -> int:
        return self.cache.length

    @property
    def k(self) -> torch.Tensor:
        return self.cache.k

    @property
    def v(self) -> torch.Tensor:
        return self.cache.v


class DigestKVCache(_AroundKVCache):
    """A :class:`KVCache` and summaries of its keys that decode-time key selection reads instead of the keys.

    Query-aware decode methods (Quest's per-page key bounds, Loki's low-rank keys)
    pick which cached keys a new query reads from a small digest of the keys; the
    cache itself keeps every token. ``summarise(cache, done)`` returns the digest
    rows (a tuple of tensors along ``dim``, 2 unless :meth:`start` says otherwise) that
    ``cache`` adds after the first ``done`` rows, or None when it adds none (e.g. a page
    not yet complete). Digest rows live in an :class:`AppendBuffer`, so the state is a value.
    """

    def __init__(self, cache: KVCache, digest: AppendBuffer, rows: int):
        self.cache, self._digest, self.rows = cache, digest, rows

    @classmethod
    def start(cls, k: torch.Tensor, v: torch.Tensor, summarise, dim: int = 2) -> "DigestKVCache":
        cache = KVCache(k, v)
        new = summarise(cache, 0)
        return cls(cache, AppendBuffer(new, dim=dim), new[0].shape[dim])

    def digest(self, i: int = 0) -> torch.Tensor:
        return self._digest.prefix(i, self.rows)

    def append(self, k: torch.Tensor, v: torch.Tensor, summarise) -> "DigestKVCache":
        """A new state: this one followed by ``k, v`` and the digest rows they complete. This one is unchanged."""
        cache = self.cache.append(k, v)
        new = summarise(cache, self.rows)
        if new is None:
            return DigestKVCache(cache, self._digest, self.rows)
        return DigestKVCache(cache, self._digest.extend(self.rows, new), self.rows + new[0].shape[self._digest.dim])

    def numel(self) -> int:
        return self.cache.numel() + sum(self.digest(i).numel() for i in range(len(self._digest.tensors)))


class WindowKVCache:
    """The first ``sinks`` and the last ``window`` keys/values of everything seen: constant decode memory.

    For patterns that can never see a key again once it has left the window
    (sliding and dilated windows, sinks + window, global + window). ``length``
    counts every token seen (the position of the next one); ``k`` and ``v`` are
    only the held tokens, in order, with the sinks first. A call runs on the held
    tokens followed by its new ones (:meth:`append`) and returns the state trimmed
    back to the bound (:meth:`trimmed`). Like :class:`KVCache` it is a value, and
    appends cost amortised O(1) copies: the tail lives in an :class:`AppendBuffer`
    that is compacted once the dropped part outgrows the kept one.
    """

    def __init__(self, buffer: AppendBuffer, start: int, end: int, length: int, sinks: int, window: int,
                 sink_kv: tuple[torch.Tensor, torch.Tensor] | None = None):
        self._buffer, self._start, self._end, self.length = buffer, start, end, length
        self.sinks, self.window, self._sink_kv = sinks, window, sink_kv  # sink_kv: the sinks, once split off

    @classmethod
    def empty_like(cls, k: torch.Tensor, v: torch.Tensor, sinks: int, window: int) -> "WindowKVCache":
        return cls(AppendBuffer((k[:, :, :0], v[:, :, :0]), dim=2), 0, 0, 0, sinks, window)

    def _held(self, i: int) -> torch.Tensor:
        tail = self._buffer.tensors[i][:, :, self._start : self._end]
        return tail if self._sink_kv is None else torch.cat([self._sink_kv[i], tail], dim=2)

    @property
    def k(self) -> torch.Tensor:
        return self._held(0)

    @property
    def v(self) -> torch.Tensor:
        return self._held(1)

    def held(self) -> int:
        return self._end - self._start + (0 if self._sink_kv is None else self.sinks)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> "WindowKVCache":
        """The held tokens followed by ``k, v`` (untrimmed: the call needs them all). This state is left as it was."""
        _check_like(self._buffer.tensors, k, v)
        n = k.shape[2]
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad or self._buffer.tensors[0].requires_grad):
            buffer = AppendBuffer((torch.cat([self._buffer.prefix(0, self._end), k], dim=2),
                                   torch.cat([self._buffer.prefix(1, self._end), v], dim=2)), dim=2)
        else:
            buffer = self._buffer.extend(self._end, (k, v))
        return WindowKVCache(buffer, self._start, self._end + n, self.length + n, self.sinks, self.window, self._sink_kv)

    def trimmed(self) -> "WindowKVCache":
        """This state holding only what a later query can still see."""
        if self.held() <= self.sinks + self.window:
            return self
        sink_kv = self._sink_kv
        if sink_kv is None and self.sinks:
            sink_kv = tuple(t[:, :, : self.sinks].clone() for t in self._buffer.tensors)
        buffer, start, end = self._buffer, self._end - self.window, self._end
        if start >= max(self.window, 16):  # compact: the dropped prefix is larger than the kept tail
            buffer = AppendBuffer(tuple(t[:, :, start:end].clone() for t in buffer.tensors), dim=2)
            start, end = 0, self.window
        return WindowKVCache(buffer, start, end, self.length, self.sinks, self.window, sink_kv)

    def positions(self) -> torch.Tensor:
        """Sequence position of each held token (``(held,)``, int64): the sinks, then the tail."""
        tail = torch.arange(self.length - (self._end - self._start), self.length, device=self._buffer.tensors[0].device)
        if self._sink_kv is None:
            return tail
        return torch.cat([torch.arange(self.sinks, device=tail.device), tail])

    def columns(self, mask):
        """The columns of an incremental ``mask`` (over every key seen) that belong to the held keys."""
        if mask is None or mask.shape[-1] == 1 or self.held() == self.length:
            return mask
        tail = mask[..., self.length - (self._end - self._start) :]
        return tail if self._sink_kv is None else torch.cat([mask[..., : self.sinks], tail], dim=-1)

    def numel(self) -> int:
        k, v = self._buffer.tensors
        per_token = k.shape[0] * k.shape[1] * (k.shape[3] + v.shape[3])
        return self.held() * per_token


def _check_like(held: tuple[torch.Tensor, ...], k: torch.Tensor, v: torch.Tensor) -> None:
    held_k, held_v = held
    if k.shape[:2] != held_k.shape[:2] or k.shape[3] != held_k.shape[3] or v.shape[3] != held_v.shape[3]:
        raise ValueError(
            f"state holds keys of shape (B, Hkv, *, D) = {tuple(held_k.shape[:2]) + ('*', held_k.shape[3])}; "
            f"got k of shape {tuple(k.shape)}: the state belongs to a different batch or layer"
        )
    if k.dtype != held_k.dtype or k.device != held_k.device:
        raise ValueError(f"state holds keys of dtype {held_k.dtype} on {held_k.device}; "
                         f"got k of dtype {k.dtype} on {k.device}")


class RecurrentState:
    """Named tensors of fixed size plus ``length``, the number of tokens consumed."""

    def __init__(self, length: int, **tensors: torch.Tensor):
        if not isinstance(length, int) or length < 0:
            raise ValueError(f"length must be a non-negative int (tokens consumed), got {length!r}")
        self.length = length
        self._tensors = dict(tensors)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The state's tensors by name, e.g. ``{"S": (B, H, Dk, Dv), "z": (B, H, Dk)}``."""
        return dict(self._tensors)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def numel(self) -> int:
        """Numbers held: constant in the sequence length."""
        return sum(t.numel() for t in self._tensors.values())

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}={tuple(t.shape)}" for n, t in self._tensors.items())
        return f"RecurrentState(length={self.length}, {shapes})"


def expect_state(state, names: tuple[str, ...], shapes: dict[str, tuple], like: torch.Tensor) -> RecurrentState | None:
    """Check that ``state`` (or None) has exactly the tensors ``names`` with ``shapes``; ValueError otherwise."""
    if state is None:
        return None
    if not isinstance(state, RecurrentState):
        raise TypeError(
            f"initial_state must be a RecurrentState returned by this mechanism, got {type(state).__name__}"
        )
    got = state.tensors()
    if set(got) != set(names):
        raise ValueError(f"initial_state holds tensors {sorted(got)}; this mechanism expects {sorted(names)}")
    for name in names:
        t = got[name]
        if tuple(t.shape) != tuple(shapes[name]):
            raise ValueError(
                f"initial_state[{name!r}] has shape {tuple(t.shape)}; expected {tuple(shapes[name])}: "
                f"the state belongs to a different batch, head count or head_dim"
            )
        if t.dtype != like.dtype or t.device != like.device:
            raise TypeError(f"initial_state[{name!r}] is {t.dtype} on {t.device}; expected {like.dtype} on {like.device}")
    return state


def mark_state(state, mechanism: str, like: torch.Tensor | None = None):
    """Record which mechanism returned ``state``, so that :func:`check_state` can refuse it elsewhere; with
    ``like`` (the call's ``q``: every tensor of a state attnkit returns has its dtype and device, tested for every
    mechanism), also that dtype and device, so that continuing it with inputs of ``like``'s kind checks no tensor."""
    state.mechanism = mechanism
    if like is not None:
        state.made_for = (mechanism, like.dtype, like.device)
    return state


def check_state(state, mechanism: str, q: torch.Tensor) -> None:
    """``state`` must be what ``attnkit.attention(..., mechanism, return_state=True)`` returned, with
    tensors of ``q``'s dtype and device; a ``ValueError``/``TypeError`` naming ``state`` otherwise. A state
    marked as made by ``mechanism`` for ``q``'s dtype and device (:func:`mark_state`) is not walked again."""
    if getattr(state, "made_for", None) == (mechanism, q.dtype, q.device):
        return
    made_by = getattr(state, "mechanism", None)
    if made_by is None:
        raise TypeError(f"state must be the state attnkit.attention(..., {mechanism!r}, return_state=True) "
                        f"returned, got {type(state).__name__}")
    if made_by != mechanism:
        raise ValueError(f"state was returned by mechanism {made_by!r}; this call runs {mechanism!r}, "
                         f"which needs a state returned by {mechanism!r}")
    for t in tensors_of(state):
        if t.is_floating_point() and (t.dtype != q.dtype or t.device != q.device):
            raise TypeError(f"state holds {t.dtype} tensors on {t.device}; this call's q is {q.dtype} on "
                            f"{q.device}: continue a state with inputs of its dtype and device")


def tensors_of(x, depth: int = 0):
    """The tensors a state holds (its attributes, tuples, lists and dicts, four levels down), but those it keeps
    in float64 on purpose (its ``float64_fields``)."""
    if isinstance(x, torch.Tensor):
        yield x
    elif depth > 3:
        return
    elif isinstance(x, (tuple, list)):
        for item in x:
            yield from tensors_of(item, depth + 1)
    elif isinstance(x, dict):
        for item in x.values():
            yield from tensors_of(item, depth + 1)
    elif hasattr(x, "__dict__"):
        exempt = getattr(x, "float64_fields", ())  # accumulators a state keeps in float64 on purpose
        for name, item in vars(x).items():
            if name not in exempt:
                yield from tensors_of(item, depth + 1)


class BlockDigestKVCache(_AroundKVCache):
    """A :class:`KVCache` and one digest row per complete block of ``block`` tokens, summarised from per-token
    side rows that the state carries until their block completes.

    A learned gate that scores key blocks (SeerAttention-R's compressed key cache) pools
    each block's keys once the block is full. The rows it pools (``side``, e.g. the keys
    before a positional rotation) may differ from the cached keys, so the state keeps the
    side rows of the unfinished block (fewer than ``block``) and hands each completed
    block to ``summarise(rows (B, Hkv, m block, D), first_block) -> (B, Hkv, m, d)``.
    Digest rows live in an :class:`AppendBuffer`: the state is a value.
    """

    def __init__(self, cache: KVCache, digest: AppendBuffer, rows: int, pending: torch.Tensor, block: int):
        self.cache, self._digest, self.rows, self.pending, self.block = cache, digest, rows, pending, block

    @classmethod
    def start(cls, k: torch.Tensor, v: torch.Tensor, side: torch.Tensor, *, block: int, summarise) -> "BlockDigestKVCache":
        done = side.shape[2] // block * block
        digest = summarise(side[:, :, :done], 0)
        return cls(KVCache(k, v), AppendBuffer((digest,), dim=2), digest.shape[2], side[:, :, done:], block)

    def digest(self) -> torch.Tensor:
        """The digest rows of the complete blocks, ``(B, Hkv, rows, d)``."""
        return self._digest.prefix(0, self.rows)

    def append(self, k: torch.Tensor, v: torch.Tensor, side: torch.Tensor, summarise) -> "BlockDigestKVCache":
        """A new state: this one followed by ``k, v`` (and their side rows). This one is unchanged."""
        cache = self.cache.append(k, v)  # refuses keys of another batch, layer or dtype
        rows = torch.cat([self.pending, side], dim=2)
        done = rows.shape[2] // self.block * self.block
        new = summarise(rows[:, :, :done], self.rows)
        digest = self._digest.extend(self.rows, (new,)) if new.shape[2] else self._digest
        return BlockDigestKVCache(cache, digest, self.rows + new.shape[2], rows[:, :, done:], self.block)

    def numel(self) -> int:
        return self.cache.numel() + self.digest().numel() + self.pending.numel()
