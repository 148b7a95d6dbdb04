"""Attention over a :class:`~attnkit.cache.store.LayerKV`: the output, and the weights policies score with.

Query heads map to kv heads as in grouped-query attention (query head ``h``
reads kv head ``h // group``). Query ``i`` of ``n`` new ones sits at position
``length - n + i`` and sees the kept keys at positions up to its own.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

QUERY_CHUNK = 512  # rows of weights materialised at a time when a policy scores a long prompt


def query_positions(store, n: int, device) -> torch.Tensor:
    return torch.arange(store.length - n, store.length, device=device, dtype=torch.int32)


def _visible(store, qpos: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, heads, n, L)``: True where a query may read a kept key (causal by position)."""
    seen = store.pos[:, :, None, :] <= qpos[None, None, :, None]
    return seen.repeat_interleave(heads // seen.shape[1], dim=1)


def attend(q: torch.Tensor, store, scale: float, k=None, v=None) -> torch.Tensor:
    """Softmax attention of ``q (B, H, n, D)`` (the newest ``n`` tokens) over the kept keys: one call.

    ``k``, ``v``: the store's keys and values if already read. A ragged store
    (:class:`~attnkit.cache.ragged.RaggedKV`) attends over its pages itself."""
    if getattr(store, "ragged", False):
        return store.attend(q, scale)
    n, heads = q.shape[2], q.shape[1]
    k = store.k if k is None else k
    v = store.v if v is None else v
    fresh = store.used == n == store.length  # a first call: the usual causal triangle
    mask = None if n == 1 or fresh else _visible(store, query_positions(store, n, q.device), heads)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=fresh and n > 1,
                                          scale=scale, enable_gqa=heads != k.shape[1])


def _bias(store, heads: int):
    """``(B, heads, L)``: the log-multiplicity of merged tokens (``None`` if the store has none)."""
    bias = getattr(store, "bias", None)
    return None if bias is None else bias.repeat_interleave(heads // bias.shape[1], dim=1)


def weights(q_rows: torch.Tensor, qpos: torch.Tensor, store, scale: float) -> torch.Tensor:
    """Attention weights ``(B, H, rows, L)`` (float64) of query rows at positions ``qpos`` over the kept keys.

    Scores are computed in the inputs' dtype and normalised in float64."""
    B, heads, rows, D = q_rows.shape
    kv_heads = store.k.shape[1]
    with torch.no_grad():
        grouped = q_rows.reshape(B, kv_heads, heads // kv_heads * rows, D)  # query head h reads kv head h // group
        s = (grouped @ store.k.transpose(-1, -2)).view(B, heads, rows, -1).to(torch.float64) * scale
        bias = _bias(store, heads)
        if bias is not None:
            s = s + bias[:, :, None]
        s = s.masked_fill(~_visible(store, qpos, heads), float("-inf"))
        return torch.softmax(s, dim=-1)


def column_sums(q: torch.Tensor, store, scale: float) -> torch.Tensor:
    """Per query head, the attention each kept key receives from the ``n`` new queries, summed: ``(B, H, L)``.

    Rows are materialised ``QUERY_CHUNK`` at a time; float64 inputs are normalised in float64, others in
    their dtype (the sums are accumulated in float64)."""
    n, heads = q.shape[2], q.shape[1]
    B, kv_heads, L, D = store.k.shape
    qpos = query_positions(store, n, q.device)
    total = torch.zeros(B, heads, L, dtype=torch.float64, device=q.device)
    with torch.no_grad():
        for lo in range(0, n, QUERY_CHUNK):
            rows, pos = q[:, :, lo : lo + QUERY_CHUNK], qpos[lo : lo + QUERY_CHUNK]
            seen = int((store.pos <= pos[-1]).sum(-1).max())  # kept positions ascend: the visible keys are a prefix
            part = _Prefix(store, seen)
            grouped = rows.reshape(B, kv_heads, heads // kv_heads * rows.shape[2], D)
            s = (grouped @ part.k.transpose(-1, -2)).view(B, heads, rows.shape[2], seen) * scale
            s = s.masked_fill(~_visible(part, pos, heads), float("-inf"))
            total[..., :seen] += torch.softmax(s, dim=-1).sum(dim=2, dtype=torch.float64)
    return total


class _Prefix:
    """The first ``count`` kept slots of a store (keys and positions)."""

    def __init__(self, store, count: int):
        self.k, self.pos = store.k[:, :, :count], store.pos[:, :, :count]


def per_kv_head(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Sum ``(B, H, L)`` over the query heads of each kv group: ``(B, Hkv, L)``."""
    B, H, L = x.shape
    return x.view(B, kv_heads, H // kv_heads, L).sum(dim=2)
