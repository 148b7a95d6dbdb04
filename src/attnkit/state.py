"""State carried between incremental calls of :func:`attnkit.attention`.

Every state exposes ``length``: the number of key/value tokens consumed so far,
which is also the position offset of the next tokens. Softmax mechanisms carry
a :class:`KVCache`; recurrent mechanisms define their own state with a
``length``.
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
        buf = self if self.filled == n else AppendBuffer(tuple(self.prefix(i, n).clone() for i in range(len(new))), self.dim)
        total = n + new[0].shape[self.dim]
        if total > buf.tensors[0].shape[self.dim]:
            capacity = max(2 * buf.tensors[0].shape[self.dim], total, 16)
            buf.tensors = tuple(_grow(t, n, capacity, self.dim) for t in buf.tensors)
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
        held_k, held_v = self._buffer.tensors
        if k.shape[:2] != held_k.shape[:2] or k.shape[3] != held_k.shape[3] or v.shape[3] != held_v.shape[3]:
            raise ValueError(
                f"state holds keys of shape (B, Hkv, *, D) = {tuple(held_k.shape[:2]) + ('*', held_k.shape[3])}; "
                f"got k of shape {tuple(k.shape)}: the state belongs to a different batch or layer"
            )
        if k.dtype != held_k.dtype or k.device != held_k.device:
            raise ValueError(f"state holds keys of dtype {held_k.dtype} on {held_k.device}; "
                             f"got k of dtype {k.dtype} on {k.device}")
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad or held_k.requires_grad):
            return KVCache(torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2))
        n = self.length
        return KVCache(k, v, buffer=self._buffer.extend(n, (k, v)), length=n + k.shape[2])

    def numel(self) -> int:
        return self.k.numel() + self.v.numel()


def kv_cache_step(form):
    """Incremental form for any mechanism whose one-shot form handles ``q_len <= kv_len``.

    Causal attention is bottom-right aligned, so running the one-shot form on
    the new queries against the whole cache is exactly the one-shot result.
    """

    def step(q, k, v, state, *, causal, mask, scale, **params):
        state = KVCache(k, v) if state is None else state.append(k, v)
        return form(q, state.k, state.v, causal=causal, mask=mask, scale=scale, **params), state

    step.__name__ = f"kv_cache_step({getattr(form, '__name__', 'form')})"
    return step
