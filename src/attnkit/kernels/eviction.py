"""A KV cache with a fixed budget that evicts by attention score (H2O, TOVA).

Decoding token ``i``: its key and value join the cache, query ``i`` attends to
the cache (itself included), each cached token's *score* is updated from the
attention weights it just received, and if the cache holds more than
``heavy + recent`` tokens it keeps the ``recent`` newest and, among the others,
the ``heavy`` with the highest scores; the rest are evicted for good. The
score (``score_by``) is H2O's accumulated attention (``"accumulated"``: every
weight a token has received while cached), TOVA's attention of the current
query alone (``"current"``), or minus the L2 norm of the token's key
(``"key_norm"``, fixed when it enters: low-norm keys are kept); per head or
averaged over heads (``head_mean``, which makes all heads keep the same tokens).

``start``: queries before it attend to all previous tokens and nothing is
evicted (the prompt was prefilled with full attention, the scores accumulating
as usual); the cache is cut to its budget after query ``start - 1``. With
``start = 0`` the policy governs every query.

Two implementations of the same rule:

- :func:`eviction_mask`: the oracle. The full score matrix is materialised and
  the rule is replayed row by row into an ``(N, N)`` boolean mask (which keys
  each query saw); attention is then plain masked softmax.
- :func:`eviction_step`: the cache itself, holding at most ``heavy + recent``
  tokens (+1 while a token is decoded), in the order they arrived. It takes any
  number of new tokens and decodes them one at a time, so prefill in pieces or
  token by token gives the same outputs as one call.

Scores are kept in float64 whatever the input dtype, so a float32 run selects
the same tokens as the float64 oracle except at near-exact ties. Grouped
key/value heads are repeated to the query heads: each query head keeps its own
tokens, as in the multi-head models of both papers.
"""
from __future__ import annotations

import torch

from .positions import repeat_kv
from ..validation import check_int


class EvictionCache:
    """The budgeted cache: ``k``, ``v`` ``(B, H, C, D)`` in arrival order, ``score`` ``(B, H, C)`` float64."""

    float64_fields = ("score",)  # kept in float64 whatever the inputs' dtype (attnkit.state.check_state)

    def __init__(self, k, v, score, length: int):
        self.k, self.v, self.score, self.length = k, v, score, length

    def numel(self) -> int:
        return self.k.numel() + self.v.numel()


def check_budget(heavy: int, recent: int, start: int) -> None:
    for name, value in (("heavy", heavy), ("recent", recent), ("start", start)):
        check_int(name, value, minimum=0)
    if heavy + recent < 1:
        raise ValueError(f"heavy + recent is the cache budget and must be >= 1, got heavy={heavy}, recent={recent}")


def _new_score(score, w, score_by: str, head_mean: bool):
    """Scores after a query's weights ``w`` over the cached tokens (``score`` already covers them)."""
    if score_by == "key_norm":
        return score
    w = w.detach().to(torch.float64)
    if head_mean:
        w = w.mean(dim=1, keepdim=True).expand_as(w)
    return score + w if score_by == "accumulated" else w


def _entry_score(k, score_by: str):
    """Score of tokens entering the cache: ``-||k||`` for ``key_norm``, else 0."""
    if score_by == "key_norm":
        return -k.detach().to(torch.float64).norm(dim=-1)
    return torch.zeros(k.shape[:3], dtype=torch.float64, device=k.device)


def _keep(score, candidates, heavy: int, recent: int, newest: int):
    """Boolean over positions: the ``recent`` newest (positions > newest - recent) and the top ``heavy`` others."""
    positions = torch.arange(score.shape[-1], device=score.device)
    protected = candidates & (positions > newest - recent)
    others = score.masked_fill(~candidates | protected, float("-inf"))
    top = others.topk(heavy, dim=-1).indices if heavy else others[..., :0].long()
    return protected | torch.zeros_like(candidates).scatter(-1, top, True)


def eviction_mask(q, k, *, scale, heavy, recent, start, score_by, head_mean):
    """The ``(B, H, N, N)`` mask of the keys each query sees under the policy (causal self-attention)."""
    H, N = q.shape[1], q.shape[2]
    with torch.no_grad():
        k = repeat_kv(k, H)
        scores = (q @ k.transpose(-1, -2)) * scale
        cached = torch.zeros(*scores.shape[:2], N, dtype=torch.bool, device=q.device)
        entry = _entry_score(k, score_by)
        score = torch.zeros_like(entry)
        rows = []
        for i in range(N):
            seen = cached.clone()
            seen[..., i] = True
            rows.append(seen)
            w = torch.softmax(scores[:, :, i].masked_fill(~seen, float("-inf")), dim=-1)
            score[..., i] = entry[..., i]
            score = _new_score(score, w, score_by, head_mean).masked_fill(~seen, 0.0)
            if i + 1 >= start and i + 1 > heavy + recent:
                cached = _keep(score, seen, heavy, recent, i)
            else:
                cached = seen
        return torch.stack(rows, dim=2)


def eviction_step(q, k, v, state, *, scale, heavy, recent, start, score_by, head_mean):
    """Decode the new tokens one at a time through the cache; returns ``(out, state)``."""
    H = q.shape[1]
    k, v = repeat_kv(k, H), repeat_kv(v, H)
    if state is None:
        B, _, _, D = k.shape
        state = EvictionCache(k.new_zeros(B, H, 0, D), v.new_zeros(B, H, 0, v.shape[-1]),
                              torch.zeros(B, H, 0, dtype=torch.float64, device=q.device), 0)
    elif not isinstance(state, EvictionCache) or state.k.shape[:2] != k.shape[:2]:
        raise ValueError("state must be the EvictionCache this mechanism returned for the same batch and heads")
    ck, cv, score, length = state.k, state.v, state.score, state.length
    entry, outs = _entry_score(k, score_by), []
    for t in range(q.shape[2]):
        ck = torch.cat([ck, k[:, :, t : t + 1]], dim=2)
        cv = torch.cat([cv, v[:, :, t : t + 1]], dim=2)
        w = torch.softmax((q[:, :, t : t + 1] @ ck.transpose(-1, -2)) * scale, dim=-1)
        outs.append(w @ cv)
        score = _new_score(torch.cat([score, entry[:, :, t : t + 1]], dim=-1), w[:, :, 0], score_by, head_mean)
        length += 1
        if length >= start and ck.shape[2] > heavy + recent:
            n = ck.shape[2]
            keep = _keep(score, torch.ones_like(score, dtype=torch.bool), heavy, recent, n - 1)
            index = keep.nonzero()[:, -1].view(*keep.shape[:2], heavy + recent)  # ascending: arrival order kept
            ck = ck.gather(2, index[..., None].expand(-1, -1, -1, ck.shape[-1]))
            cv = cv.gather(2, index[..., None].expand(-1, -1, -1, cv.shape[-1]))
            score = score.gather(2, index)
    out = torch.cat(outs, dim=2) if outs else q.new_zeros(*q.shape[:3], v.shape[-1])
    return out, EvictionCache(ck, cv, score, length)
