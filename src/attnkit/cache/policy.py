"""The interface every cache policy implements, and the no-op policy.

A policy keeps at most a *budget* of tokens per layer: an int (tokens) or a
float in (0, 1] (a fraction of the prompt, the first call's length). It is
applied at ``when`` = ``"prefill"`` (once, after the prompt attended to
itself in full), ``"decode"`` (after each later call) or ``"both"``.

A prompt may also arrive in chunks when its length is declared
(``KVState(policy, prompt=N)``, ``Cache(policy, prompt=N)``): the policy then
compresses after every chunk, so the prefill never holds more than the budget
plus a chunk. ``chunked`` says what that gives: ``"exact"`` (the tokens kept
are those a single prefill call keeps: the choice of each token does not
depend on later ones), ``"approximate"`` (the policy scores with queries that
see only the tokens kept so far: the chunk-level version of its greedy rule)
or ``None`` (it needs the whole prompt at once: refused).

After every call a policy first updates its running score of the kept tokens
(:meth:`Policy.observe`; the policies that read attention weights set
``needs_scores``), then, if the layer holds more than its budget, keeps the
tokens of highest :meth:`Policy.rank` per (batch, kv head) row, the same
number in every row. Subclasses override ``observe`` and ``rank``; wrappers
(:class:`attnkit.cache.PyramidKV`) override :meth:`Policy.budget`.
"""
from __future__ import annotations

import torch

from .store import LayerKV

WHEN = ("prefill", "decode", "both")


class Policy:
    needs_scores = False
    chunked = None
    ragged_rows = False  # heads keep different numbers of tokens (the layer is a RaggedKV)
    uneven_layers = False  # layers keep different numbers of tokens

    def __init__(self, budget: int | float, *, when: str = "both", slack: int = 0):
        check_budget(budget)
        if when not in WHEN:
            raise ValueError(f"when must be one of {WHEN}, got {when!r}")
        if isinstance(slack, bool) or not isinstance(slack, int) or slack < 0:
            raise ValueError(f"slack must be an int >= 0 (tokens a layer may hold past its budget between "
                             f"evictions), got {slack!r}")
        self.budget_value, self.when, self.slack = budget, when, slack

    def __repr__(self) -> str:
        return f"{type(self).__name__}(budget={self.budget_value!r}, when={self.when!r})"

    def empty_store(self, prompt: int = 0):
        """The storage of an empty layer (quantising policies store differently); ``prompt``: declared length."""
        return LayerKV.empty(prompt)

    def budget(self, layer: int, prompt: int) -> int:
        """Tokens a layer keeps, for a prompt of ``prompt`` tokens."""
        return tokens_of(self.budget_value, prompt)

    def prompt_budget(self, layer: int, prompt: int, unit: str = "tokens") -> int:
        """``budget(layer, prompt)``, refused when it is larger than the prompt (``unit``: what is counted)."""
        keep = self.budget(layer, prompt)
        if keep > prompt:
            raise ValueError(f"{self!r} keeps {keep} {unit} in layer {layer} but the prompt has only "
                             f"{prompt}: a budget must be at most the context")
        return keep

    def observe(self, store, q: torch.Tensor, scale: float):
        """The running score of the kept tokens after the new queries ``q`` (``None``: the policy keeps none)."""
        return None

    def rank(self, store, keep: int) -> torch.Tensor:
        """``(B, Hkv, L)``: higher is kept first (``keep``: how many will be)."""
        raise NotImplementedError

    def step(self, store, q: torch.Tensor, scale: float, layer: int, *, in_place: bool = False):
        """The store after the call whose tokens were just appended (and whose queries are ``q``).

        ``in_place``: the caller holds the only reference to ``store`` and its buffer and never reads it again,
        so the eviction may move the kept tokens to the front of that buffer instead of copying them to a new
        one (a :class:`~attnkit.cache.store.LayerKV` does; ragged and quantised layers are rebuilt either way)."""
        store, chosen = self.select(store, q, scale, layer)
        if chosen is None:
            return store
        index, score, room = chosen
        return store.compact(index, score) if in_place else store.keep(index, score, room)

    def select(self, store, q: torch.Tensor, scale: float, layer: int):
        """``(store with its running score, (index, score, room) of the slots to keep, or None to keep all))``."""
        prefill = store.length <= store.prompt
        store = store.with_score(self.observe(store, q, scale))
        keep = self.prompt_budget(layer, store.prompt) if prefill else self.budget(layer, store.prompt)
        applies = self.when == "both" or (self.when == "prefill") == prefill
        if not applies or store.used <= keep + (0 if prefill else self.slack):
            return store, None
        index = self.rank(store, keep).topk(keep, dim=-1).indices.sort(dim=-1).values
        score = None if store.score is None else store.score.gather(-1, index)
        room = 1 + self.slack if self.when != "prefill" and store.length >= store.prompt else prefill_room(store, keep)
        return store, (index, score, room)


def prefill_room(store, keep: int) -> int:
    """Free slots per row a store compressed at prefill keeps: a prefill chunk's worth for the next chunk; once
    the prompt is complete, room for decoded tokens, ``keep / 8`` but no more than the last chunk (so the room
    never raises a chunked prefill's peak)."""
    if store.length < store.prompt:
        return max(16, store.appended)
    return max(16, min(keep // 8, store.appended))


class NoCompression(Policy):
    """Keeps every token: the cache is a plain KV cache (the baseline the policies are measured against)."""

    chunked = "exact"

    def __init__(self):
        super().__init__(1.0, when="both")

    def __repr__(self) -> str:
        return "NoCompression()"

    def budget(self, layer: int, prompt: int) -> int:
        return prompt

    def select(self, store, q, scale, layer):
        return store, None


def checked_policy(policy) -> Policy:
    """``policy``, or :class:`NoCompression` for ``None`` (a plain KV cache); anything else is refused."""
    policy = NoCompression() if policy is None else policy
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be an attnkit.cache policy (e.g. attnkit.cache.H2O(0.25)), got {type(policy).__name__}")
    return policy


def check_prompt(prompt) -> None:
    """A declared prompt length (``None``: the prompt arrives in one call)."""
    if prompt is not None and (isinstance(prompt, bool) or not isinstance(prompt, int) or prompt < 1):
        raise ValueError(f"prompt must be the prompt's length (an int >= 1) when it arrives in chunks, got {prompt!r}")


def append_call(policy: Policy, store, layer: int, k: torch.Tensor, v: torch.Tensor):
    """``store`` with a call's keys and values ``(B, Hkv, n, D)`` appended. A prefill chunk (a call that ends before
    the declared prompt) is refused for a policy that needs the whole prompt; the first chunk reserves the layer's
    budget plus a chunk, so the buffer never grows while the prompt streams in."""
    n = k.shape[2]
    if store.length + n < store.prompt and policy.chunked is None:
        raise ValueError(f"{policy!r} needs the whole prompt at once (it scores with every prompt token or query): "
                         f"prefill it in one call, or declare no prompt length")
    first_chunk = not store.length and store.prompt and n < store.prompt
    return store.append(k, v, min(store.prompt, policy.budget(layer, store.prompt) + n) if first_chunk else 0)


def check_budget(budget) -> None:
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise TypeError(f"budget must be an int (tokens) or a float in (0, 1] (a fraction of the prompt), "
                        f"got {type(budget).__name__}")
    if isinstance(budget, int) and budget < 1:
        raise ValueError(f"budget must be >= 1 token, got {budget}")
    if isinstance(budget, float) and not 0.0 < budget <= 1.0:
        raise ValueError(f"a fractional budget must be in (0, 1], got {budget}")


def tokens_of(budget, prompt: int) -> int:
    return budget if isinstance(budget, int) else max(1, round(budget * prompt))


def padded_score(store, fill: float = 0.0):
    """The carried score extended to every kept slot (new tokens get ``fill``), or zeros if none."""
    B, Hkv, L = store.pos.shape
    old = store.score
    if old is None:
        return torch.full((B, Hkv, L), fill, dtype=torch.float64, device=store.k.device)
    if old.shape[-1] == L:
        return old
    return torch.cat([old, old.new_full((B, Hkv, L - old.shape[-1]), fill)], dim=-1)


def newest(store, count: int) -> torch.Tensor:
    """``(B, Hkv, L)`` bool: the ``count`` most recent positions."""
    return store.pos > store.length - 1 - count
