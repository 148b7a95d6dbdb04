"""State carried between incremental calls of :func:`attnkit.attention`.

Every state exposes ``length``: the number of key/value tokens consumed so far,
which is also the position offset of the next tokens. Softmax mechanisms carry
a :class:`KVCache`; recurrent mechanisms define their own state with a
``length``.
"""
from __future__ import annotations

import torch


class KVCache:
    """Keys and values seen so far, in buffers that grow geometrically.

    Appending a token costs amortised O(1) copies, so token-by-token decoding
    of N tokens is O(N) in copying rather than O(N^2). When gradients are
    needed the cache concatenates instead, so autograd sees every write.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self._k, self._v, self.length = k, v, k.shape[2]

    @property
    def k(self) -> torch.Tensor:
        return self._k[:, :, : self.length]

    @property
    def v(self) -> torch.Tensor:
        return self._v[:, :, : self.length]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> "KVCache":
        if k.shape[:2] != self._k.shape[:2] or k.shape[3] != self._k.shape[3] or v.shape[3] != self._v.shape[3]:
            raise ValueError(
                f"state holds keys of shape (B, Hkv, *, D) = {tuple(self._k.shape[:2]) + ('*', self._k.shape[3])}; "
                f"got k of shape {tuple(k.shape)}: the state belongs to a different batch or layer"
            )
        n, new = self.length, k.shape[2]
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad or self._k.requires_grad):
            return KVCache(torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2))
        if n + new > self._k.shape[2]:
            capacity = max(2 * self._k.shape[2], n + new, 16)
            self._k = _grow(self._k, n, capacity)
            self._v = _grow(self._v, n, capacity)
        self._k[:, :, n : n + new] = k
        self._v[:, :, n : n + new] = v
        self.length = n + new
        return self

    def numel(self) -> int:
        return self.k.numel() + self.v.numel()


def _grow(buf: torch.Tensor, used: int, capacity: int) -> torch.Tensor:
    out = buf.new_empty(buf.shape[0], buf.shape[1], capacity, buf.shape[3])
    out[:, :, :used] = buf[:, :, :used]
    return out


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
