"""The cache as a state of attnkit's incremental API: :class:`KVState`.

``attnkit.attention(q, k, v, "softmax", causal=True, state=KVState(policy), return_state=True)``
appends the new keys and values, runs one attention call of the new queries
over everything kept, then lets the policy compress. The returned state is a
new value; the one passed in is unchanged. Its ``length`` counts every token
consumed (the position offset RoPE continues from), not the kept ones.

``prompt=N`` declares that the prompt's ``N`` tokens arrive in several calls
(chunked prefill): the policy compresses after each one, so the layer never
holds more than its budget plus a chunk (see :mod:`attnkit.cache.policy` for
which policies allow it, and :func:`attnkit.cache.chunked.prefill`).
"""
from __future__ import annotations

import torch

from .policy import Policy, append_call, check_prompt, checked_policy
from .ragged import PAD
from .scores import attend, query_positions, weights


class KVState:
    def __init__(self, policy: Policy | None = None, layer: int = 0, store=None, *, prompt: int | None = None):
        policy = checked_policy(policy)
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise ValueError(f"layer must be an int >= 0, got {layer!r}")
        check_prompt(prompt)
        self.policy, self.layer = policy, layer
        self.store = policy.empty_store(prompt or 0) if store is None else store

    @property
    def length(self) -> int:
        return self.store.length

    def numel(self) -> int:
        return self.store.numel()

    def nbytes(self) -> int:
        return self.store.nbytes()

    def _appended(self, q, k, v):
        if q.shape[1] % k.shape[1]:
            raise ValueError(f"q has {q.shape[1]} heads, not a multiple of the {k.shape[1]} kv heads")
        return append_call(self.policy, self.store, self.layer, k, v)

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
        """``(out, next_state)`` for the new tokens' ``q (B, H, n, D)``, ``k``, ``v (B, Hkv, n, D)``."""
        store = self._appended(q, k, v)
        out = attend(q, store, scale)
        return out, type(self)(self.policy, self.layer, self._evicted(store, q, scale))

    def _evicted(self, store, q, scale):
        """The store the policy leaves after this call (``store``: this state's with the call's tokens appended)."""
        return self.policy.step(store, q, scale, self.layer)

    def read(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
        """What :meth:`step` reads: ``(weights, values, positions)``, the softmax weights ``(B, H, n, L)`` (q's
        dtype, no gradient) of the new queries over the kept keys and the new ones, their values ``(B, Hkv, L, Dv)``
        and their sequence positions ``(B, H, L)`` (``weights @ values`` is the step's output). This state is
        left as it was."""
        store = self._appended(q, k, v)
        n, heads = q.shape[2], q.shape[1]
        found = weights(q, query_positions(store, n, q.device), store, scale).to(q.dtype)
        positions = store.pos.to(torch.int64).masked_fill(store.pos == PAD, 0)  # ragged rows' padding: weight 0
        return found, store.v, positions.repeat_interleave(heads // positions.shape[1], dim=1)


def layer_states(policy: Policy | None, layers: int, *, prompt: int | None = None) -> list[KVState]:
    """One empty state per layer (``DecoderLM.forward(tokens, state=...)``); ``prompt``: see :class:`KVState`."""
    return [KVState(policy, i, prompt=prompt) for i in range(layers)]
