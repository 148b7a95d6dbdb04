"""All-gather context parallelism for softmax layers: every rank gathers all keys and values.

The softmax half of LASP-2H (Sun et al., "LASP-2: Rethinking Sequence
Parallelism for Linear Attention and Its Hybrid"): in a hybrid model whose
linear layers run LASP-2 on contiguous shards, each softmax layer all-gathers
K and V (its queries stay local) and attends this rank's queries to the whole
sequence at their global positions. Backward: the gathered keys' and values'
gradients are all-reduced and each rank keeps its own shard's.
"""
from __future__ import annotations

import torch

from .. import api
from ..validation import check_qkv
from . import blocks
from .comm import Group
from .lasp2 import _AllGather
from .layout import LAYOUTS, Layout, unpermute


def allgather_attention(q, k, v, *, group=None, layout: str = "contiguous", causal: bool = False,
                        window: int | None = None, doc_ids: torch.Tensor | None = None, mask_mod=None,
                        scale: float | None = None) -> torch.Tensor:
    """Softmax attention of this rank's queries over the all-gathered keys and values.

    Arguments as :func:`attnkit.distributed.ring_attention` (masks on global positions).
    """
    g = Group(group, "allgather_attention")
    check_qkv(q, k, v)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"allgather_attention shards one sequence: q has {q.shape[2]} local tokens but k has "
                         f"{k.shape[2]}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    B, H, n, D = q.shape
    g.agree([B, H, k.shape[1], n, D, v.shape[-1], LAYOUTS.index(layout), int(causal)],
            ["batch", "heads", "kv heads", "local sequence length", "head_dim", "value head_dim", "layout", "causal"],
            q.device)
    lay = Layout(layout, g.size, n * g.size)
    if doc_ids is not None and (doc_ids.ndim != 2 or doc_ids.shape[1] != lay.seq_len
                                or doc_ids.shape[0] not in (1, B)):
        raise ValueError(f"doc_ids must cover the whole sequence: shape (batch or 1, {lay.seq_len}), got "
                         f"{tuple(doc_ids.shape)}")
    keys, values = (unpermute(torch.cat(_AllGather.apply(t, g).unbind(0), dim=2), lay, 2) for t in (k, v))
    mask = blocks.build_mask(causal=causal, window=window, doc_ids=doc_ids, mask_mod=mask_mod)
    allowed = None
    if mask is not None:
        allowed = blocks.element_mask(mask, B, H, lay.positions(g.rank, q.device),
                                      torch.arange(lay.seq_len, device=q.device))
    return api.attention(q, keys, values, "softmax", mask=allowed, scale=scale)
