"""Ada-KV: head-wise adaptive budgets around any scorer.

Feng et al., "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget
Allocation for Efficient LLM Inference" (2024). A layer with ``h`` kv heads
and a budget of ``k`` tokens per head has ``h k`` slots to give. Instead of
``k`` to every head, the scores of all heads are ranked together and the ``h k``
best (head, token) pairs are kept, so head ``i`` keeps
``k_i = |{j : s_ij among the h k largest of the layer}|`` tokens: a head whose
attention is concentrated on few tokens gives budget to a head whose attention
is spread out (Algorithm 1). A safeguard keeps each head's ``floor(alpha k)``
best tokens whatever the others score (the authors' ``alpha = 0.2``).

The scorer (:class:`SnapKV` as Ada-SnapKV, :class:`PyramidKV` as
Ada-PyramidKV, or any other policy applied at prefill) supplies the scores,
its forced tokens (a rank of ``+inf``, e.g. SnapKV's observation window) and
the per-layer budget ``k``. Scores must be comparable across heads (attention
mass is). The heads then hold different numbers of tokens: the layer becomes
a :class:`~attnkit.cache.ragged.RaggedKV`, packed, whose total is ``h k``.
Applied at prefill (as in the paper); decoded tokens are appended to every
head. A prompt prefilled in chunks (``KVState(policy, prompt=N)``) is
compressed after each chunk: the scorer scores the tokens kept so far with
the chunk's queries and the layer's pairs are ranked jointly again (an
approximation: a token dropped at one chunk does not come back), when the
scorer itself allows chunks.
"""
from __future__ import annotations

import torch

from .policy import Policy, prefill_room
from .ragged import RaggedKV, row_counts
from .store import gather_slots


class AdaKV(Policy):
    ragged_rows = True  # heads keep different numbers of tokens: a RaggedKV

    def __init__(self, scorer: Policy, *, alpha: float = 0.2):
        if not isinstance(scorer, Policy):
            raise TypeError(f"scorer must be an attnkit.cache policy (e.g. SnapKV(0.25)), got {type(scorer).__name__}")
        if scorer.when != "prefill":
            raise ValueError(f"AdaKV allocates budgets once, at prefill: give it a scorer with when='prefill', "
                             f"got {scorer!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1] (the share of each head's budget it keeps whatever the "
                             f"others score), got {alpha!r}")
        super().__init__(scorer.budget_value, when="prefill")
        self.scorer, self.alpha, self.needs_scores = scorer, float(alpha), scorer.needs_scores
        # in chunks: each chunk's scores of the tokens kept so far, ranked jointly (the scorer's chunk-level rule);
        # not for a scorer that carries its own state from chunk to chunk (its ``select``, e.g. Expected
        # Attention's running query statistics): the ragged rows hold no such state
        self.chunked = "approximate" if scorer.chunked and type(scorer).select is Policy.select else None

    def __repr__(self) -> str:
        return f"AdaKV({self.scorer!r}, alpha={self.alpha})"

    def budget(self, layer: int, prompt: int) -> int:
        return self.scorer.budget(layer, prompt)

    def step(self, store, q, scale, layer, *, in_place=False):  # ragged rows are packed anew either way
        if store.length > store.prompt:
            return store  # decoded tokens are appended, never evicted
        keep = self.prompt_budget(layer, store.prompt, "tokens per head")
        count = row_counts(store)
        if int(count.sum()) <= count.numel() * keep:
            return store
        rank = self.scorer.rank(store.with_score(self.scorer.observe(store, q, scale)), keep)
        rank = rank.masked_fill(torch.arange(rank.shape[-1], device=rank.device) >= count[..., None], float("-inf"))
        kept = head_budgets(rank, keep, self.alpha)
        index = rank.topk(int(kept.max()), dim=-1).indices  # each row's best first
        slot = torch.arange(index.shape[-1], device=index.device)
        used = rank.shape[-1]
        index = index.masked_fill(slot >= kept[..., None], used).sort(dim=-1).values  # kept slots ascending, first
        safe = index.clamp_max(used - 1)
        gather = lambda t: None if t is None else gather_slots(t, safe)
        room = prefill_room(store, keep)
        return RaggedKV.pack(gather(store.k), gather(store.v), gather(store.pos), kept, store.length, store.prompt,
                             room=room, bias=gather(getattr(store, "bias", None)))


def head_budgets(rank: torch.Tensor, keep: int, alpha: float) -> torch.Tensor:
    """``(B, Hkv)`` int64: tokens each head keeps when the layer keeps ``Hkv * keep`` ranked jointly."""
    B, heads, L = rank.shape
    rank = rank.to(torch.float64)
    safe = int(alpha * keep)
    if safe:
        rank = rank.scatter(-1, rank.topk(safe, dim=-1).indices, float("inf"))
    chosen = rank.flatten(1).topk(heads * keep, dim=-1).indices // L
    return torch.zeros(B, heads, dtype=torch.int64, device=rank.device).scatter_add_(
        1, chosen, torch.ones_like(chosen))
