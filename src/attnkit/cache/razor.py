"""RazorAttention: retrieval heads keep everything, the others a window and a compensation token.

Tang et al., "RazorAttention: Efficient KV Cache Compression Through
Retrieval Heads" (2024). Most heads read only the attention sinks and a local
window; a few *retrieval heads* read the whole context. Retrieval heads are
found by their scores on a random token sequence repeated (``x x``):

- an **echo** head attends from the second copy's token ``i`` to the same
  token in the first copy, ``i - period``;
- an **induction** head attends to the token after it, ``i - period + 1``;

a head's score is the attention weight it puts there, averaged over the
second copy (:func:`retrieval_scores`); the paper protects the heads of
highest induction score (14%) and echo score (1%) (:func:`retrieval_heads`).

Retrieval heads keep their whole prompt. Every other head keeps the first
``sinks`` tokens, the ``budget - sinks - 1`` most recent ones and one
**compensation token** for the ``n`` tokens dropped between them,
``k^ = mean(dropped keys)``, ``v^ = mean(dropped values)``, which attention
counts ``n`` times:

    out = (sum_kept e^{q.k_j} v_j + n e^{q.k^} v^) / (sum_kept e^{q.k_j} + n e^{q.k^})

(stored as a log-multiplicity ``log n`` added to its score). Applied at
prefill; decoded tokens are appended to every head. The heads hold different
numbers of tokens: the layer is a :class:`~attnkit.cache.ragged.RaggedKV`.
With GQA a kv head is a retrieval head when any of its query heads is.
"""
from __future__ import annotations

import math

import torch

from .policy import Policy
from .ragged import RaggedKV


class RazorAttention(Policy):
    ragged_rows = True  # heads keep different numbers of tokens: a RaggedKV

    def __init__(self, budget, *, retrieval: torch.Tensor, sinks: int = 4, compensate: bool = True):
        super().__init__(budget, when="prefill")
        if not isinstance(retrieval, torch.Tensor) or retrieval.dtype != torch.bool or retrieval.ndim != 2:
            raise TypeError("retrieval must be a bool tensor (layers, kv_heads), True for a retrieval head "
                            "(see attnkit.cache.razor.retrieval_heads)")
        if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
            raise ValueError(f"sinks must be an int >= 0, got {sinks!r}")
        self.retrieval, self.sinks, self.compensate = retrieval, sinks, bool(compensate)

    def __repr__(self) -> str:
        return (f"RazorAttention(budget={self.budget_value!r}, retrieval heads={int(self.retrieval.sum())}/"
                f"{self.retrieval.numel()}, sinks={self.sinks}, compensate={self.compensate})")

    def budget(self, layer: int, prompt: int) -> int:
        keep = super().budget(layer, prompt)
        if keep <= self.sinks + self.compensate:
            raise ValueError(f"budget {keep} tokens must exceed sinks={self.sinks} plus the compensation token "
                             "(room for a recent window)")
        return keep

    def step(self, store, q, scale, layer):
        if store.length != store.prompt:
            return store  # decoded tokens are appended, never evicted
        keep = self.prompt_budget(layer, store.prompt)
        B, kv_heads, L = store.pos.shape
        if layer >= self.retrieval.shape[0] or self.retrieval.shape[1] != kv_heads:
            raise ValueError(f"retrieval has shape {tuple(self.retrieval.shape)} (layers, kv_heads); this model's "
                             f"layer {layer} has {kv_heads} kv heads")
        if keep >= L:
            return store
        full = self.retrieval[layer].to(store.k.device)[None].expand(B, -1)
        window = keep - self.sinks - self.compensate
        dropped = L - self.sinks - window
        slot = torch.arange(L, device=store.k.device)
        short = torch.cat([slot[: self.sinks], slot[L - window - self.compensate:]])  # the token before the window
        index = torch.where(full[..., None], slot, torch.cat([short, short.new_full((L - keep,), L - 1)]))
        gather = lambda t: t.gather(2, index if t.ndim == 3 else index[..., None].expand(-1, -1, -1, t.shape[-1]))
        k, v, pos = gather(store.k), gather(store.v), gather(store.pos)
        bias = None
        if self.compensate:  # the slot after the sinks becomes the compensation token of the dropped span
            middle = slice(self.sinks, L - window)
            at = (~full)[..., None]
            k[:, :, self.sinks] = torch.where(at, store.k[:, :, middle].mean(dim=2), k[:, :, self.sinks])
            v[:, :, self.sinks] = torch.where(at, store.v[:, :, middle].mean(dim=2), v[:, :, self.sinks])
            bias = torch.zeros(B, kv_heads, L, dtype=torch.float32, device=k.device)
            bias[:, :, self.sinks] = torch.where(~full, math.log(dropped), 0.0)
        count = torch.where(full, L, keep)
        return RaggedKV.pack(k, v, pos, count, store.length, store.prompt, room=max(16, keep // 8), bias=bias)


def retrieval_scores(weights: torch.Tensor, period: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Echo and induction scores ``(H,)`` of each query head, from the attention ``weights (B, H, n, n)`` of a
    random block of ``period`` tokens repeated (``n >= 2 period``), averaged over the second copy and the batch."""
    n = weights.shape[-1]
    if n < 2 * period or period < 2:
        raise ValueError(f"weights over {n} tokens cannot hold two copies of a block of {period} tokens (period >= 2)")
    rows = torch.arange(period, n, device=weights.device)
    echo = weights[:, :, rows, rows - period].mean(dim=(0, 2))
    induction = weights[:, :, rows, rows - period + 1].mean(dim=(0, 2))
    return echo, induction


def retrieval_heads(echo: torch.Tensor, induction: torch.Tensor, kv_heads: int, *, induction_share: float = 0.14,
                    echo_share: float = 0.01) -> torch.Tensor:
    """``(layers, kv_heads)`` bool: the kv heads serving one of the top ``induction_share`` of query heads by
    induction score or the top ``echo_share`` by echo score (at least one of each); ``echo``, ``induction``:
    ``(layers, H)``."""
    layers, heads = induction.shape
    chosen = torch.zeros(layers * heads, dtype=torch.bool, device=induction.device)
    for score, share in ((induction, induction_share), (echo, echo_share)):
        count = max(1, round(share * layers * heads))
        chosen[score.flatten().topk(count).indices] = True
    return chosen.view(layers, kv_heads, heads // kv_heads).any(dim=-1)
