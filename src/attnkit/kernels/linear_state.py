"""The constant-size state of recurrent (linear, gated, delta-rule) mechanisms.

A recurrent mechanism summarises everything it has read in a few fixed-size
tensors (for linear attention the matrix ``S = sum_j phi(k_j)^T v_j`` and the
normaliser ``z = sum_j phi(k_j)``). :class:`RecurrentState` holds them by name,
with ``length`` = tokens consumed, which is what :func:`attnkit.attention`
needs to continue a sequence (positions, causal alignment).

Stateful forms take it as ``initial_state`` and return the final one; see
``docs/design.md`` ("Recurrent-state contract").
"""
from __future__ import annotations

import torch


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
