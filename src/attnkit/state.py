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
