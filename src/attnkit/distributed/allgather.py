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
from . import blocks, checks
from .comm import Group
from .lasp2 import _AllGather
from .layout import unpermute


def allgather_attention(q, k, v, *, group=None, layout: str = "contiguous", causal: bool = False,
                        window: int | None = None, doc_ids: torch.Tensor | None = None, mask_mod=None,
                        scale: float | None = None) -> torch.Tensor:
    """Softmax attention of this rank's queries over the all-gathered keys and values.

    Arguments as :func:`attnkit.distributed.ring_attention` (masks on global positions).
    """
    g = Group(group, "allgather_attention")
    lay = checks.sharded_self_attention(g, q, k, v, layout=layout, causal=causal, doc_ids=doc_ids)
    B, H = q.shape[:2]
    keys, values = (unpermute(torch.cat(_AllGather.apply(t, g).unbind(0), dim=2), lay, 2) for t in (k, v))
    mask = blocks.build_mask(causal=causal, window=window, doc_ids=doc_ids, mask_mod=mask_mod)
    allowed = None
    if mask is not None:
        allowed = blocks.element_mask(mask, B, H, lay.positions(g.rank, q.device),
                                      torch.arange(lay.seq_len, device=q.device))
    return api.attention(q, keys, values, "softmax", mask=allowed, scale=scale)
