"""Query/key positions and the causal rule shared by every kernel.

attnkit aligns causal attention bottom-right (as FlashAttention >= 2.1 and a KV
cache do): with ``q_len`` queries and ``kv_len`` keys, query ``i`` sits at
position ``kv_len - q_len + i`` and sees keys ``0 .. kv_len - q_len + i``.
For self-attention (``q_len == kv_len``) this is the usual lower triangle; for
a decode step it lets the new query see the whole cache.
"""
from __future__ import annotations

import torch


def query_positions(q_len: int, kv_len: int, device=None) -> torch.Tensor:
    return torch.arange(kv_len - q_len, kv_len, device=device)


def causal_mask(q_len: int, kv_len: int, device=None) -> torch.Tensor:
    """Boolean ``(q_len, kv_len)``: True where query i may attend to key j."""
    qi = query_positions(q_len, kv_len, device)[:, None]
    kj = torch.arange(kv_len, device=device)[None, :]
    return kj <= qi


def repeat_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    """Expand ``(B, Hkv, N, D)`` to ``(B, heads, N, D)`` for GQA (query head h uses kv head h // group)."""
    group = heads // x.shape[1]
    if group == 1:
        return x
    return x.repeat_interleave(group, dim=1)
