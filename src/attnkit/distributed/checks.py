"""The checks a softmax strategy over one sharded sequence makes before any work, alike on every rank."""
from __future__ import annotations

import torch

from ..validation import check_qkv
from .comm import Group
from .layout import LAYOUTS, Layout


def sharded_self_attention(g: Group, q, k, v, *, layout: str, causal: bool, doc_ids) -> Layout:
    """Check shards, settings and document ids (the same on every rank); the layout of the whole sequence."""
    check_qkv(q, k, v)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"{g.strategy} is self-attention over one sharded sequence: q has {q.shape[2]} local "
                         f"tokens but k has {k.shape[2]}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"q has {q.shape[1]} heads, not a multiple of k's {k.shape[1]} (GQA groups)")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    B, H, n, D = q.shape
    g.agree([B, H, k.shape[1], n, D, v.shape[-1], LAYOUTS.index(layout), int(causal)],
            ["batch", "heads", "kv heads", "local sequence length", "head_dim", "value head_dim", "layout", "causal"],
            q.device)
    lay = Layout(layout, g.size, n * g.size)
    if doc_ids is not None and (not isinstance(doc_ids, torch.Tensor) or doc_ids.ndim != 2
                                or doc_ids.shape[1] != lay.seq_len or doc_ids.shape[0] not in (1, B)):
        raise ValueError(f"doc_ids must cover the whole sequence: shape (batch or 1, {lay.seq_len}), got "
                         f"{tuple(getattr(doc_ids, 'shape', ()))}")
    return lay
