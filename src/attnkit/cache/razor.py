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
prefill; decoded tokens are appended to every head. A prompt prefilled in
chunks keeps exactly what one call keeps: after each chunk the tokens that
left the window join the compensation token, a mean weighted by each merged
token's multiplicity, so it ends as the mean of every dropped token. The heads hold different
numbers of tokens: the layer is a :class:`~attnkit.cache.ragged.RaggedKV`.
With GQA a kv head is a retrieval head when any of its query heads is.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from .policy import Policy, prefill_room
from .ragged import RaggedKV, row_counts
from .store import gather_slots


class RazorAttention(Policy):
    chunked = "exact"  # the window slides and the compensation token absorbs what leaves it, chunk by chunk
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

    def step(self, store, q, scale, layer, *, in_place=False):  # ragged rows are packed anew either way
        if store.length > store.prompt:
            return store  # decoded tokens are appended, never evicted
        keep = self.prompt_budget(layer, store.prompt)
        count = row_counts(store)
        B, kv_heads = count.shape
        if layer >= self.retrieval.shape[0] or self.retrieval.shape[1] != kv_heads:
            raise ValueError(f"retrieval has shape {tuple(self.retrieval.shape)} (layers, kv_heads); this model's "
                             f"layer {layer} has {kv_heads} kv heads")
        full = self.retrieval[layer].to(count.device)[None].expand(B, -1)
        cut = ~full & (count > keep)  # the rows that drop tokens now
        if not bool(cut.any()):
            return store
        k, v, pos = store.k, store.v, store.pos
        bias = getattr(store, "bias", None)
        M = pos.shape[-1]
        window = keep - self.sinks - int(self.compensate)
        slot = torch.arange(M, device=k.device)
        # a cut row keeps its sinks, the slot before its window (the compensation token's place) and the window
        short = torch.cat([slot[: self.sinks].expand(B, kv_heads, -1),
                           count[..., None] - window - int(self.compensate) + slot[: window + int(self.compensate)]], dim=-1)
        width = max(keep, int(torch.where(cut, 0, count).max()))
        index = torch.where(cut[..., None], F.pad(short, (0, width - keep)), slot[:width]).clamp_max(M - 1)
        kept_k, kept_v, kept_pos = (gather_slots(t, index) for t in (k, v, pos))
        kept_bias = None if bias is None else gather_slots(bias, index)
        if self.compensate:  # the dropped span, merged tokens counted with their multiplicity, is one token
            span = (slot >= self.sinks) & (slot < count[..., None] - window)  # (B, Hkv, M)
            weight = torch.where(span, 1.0 if bias is None else bias.double().exp(), 0.0)
            total = weight.sum(-1)  # tokens the compensation token stands for
            mean = lambda t: ((weight[..., None] * t.double()).sum(2) / total.clamp_min(1)[..., None]).to(t.dtype)
            at = cut[..., None]
            kept_k[:, :, self.sinks] = torch.where(at, mean(k), kept_k[:, :, self.sinks])
            kept_v[:, :, self.sinks] = torch.where(at, mean(v), kept_v[:, :, self.sinks])
            kept_bias = torch.zeros_like(kept_pos, dtype=torch.float32) if kept_bias is None else kept_bias
            kept_bias[:, :, self.sinks] = torch.where(cut, total.log().float(), kept_bias[:, :, self.sinks])
        room = prefill_room(store, keep)
        return RaggedKV.pack(kept_k, kept_v, kept_pos, torch.where(cut, keep, count), store.length, store.prompt,
                             room=room, bias=kept_bias)


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
