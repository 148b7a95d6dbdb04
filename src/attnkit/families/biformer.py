"""Bi-Level Routing Attention (Zhu, Wang, Ke, Zhang and Lau, "BiFormer: Vision Transformer with Bi-Level
Routing Attention").

The tokens are cut into ``S^2`` regions. A region-level graph, built from the
regions' mean query and mean key, routes each region to its ``k`` most related
regions; every token of a region then attends to all tokens of those regions::

    Q^r, K^r = mean over each region of Q, K                   (S^2 x C)
    A^r = Q^r (K^r)^T                                          (region affinity graph)
    I^r = topk_index(A^r, k)                                   (k regions per region)
    K^g, V^g = gather(K, I^r), gather(V, I^r)                  (the routed regions' tokens)
    O = Attention(Q, K^g, V^g)                                 (token-to-token attention)

Here a region is ``region_size`` consecutive tokens (a last, shorter region
averages what it has); :class:`attnkit.nn.vision.biformer.BiLevelRoutingAttention`
lays an NCHW map out region by region, so its ``S x S`` windows are such runs,
and adds the paper's local context enhancement ``LCE(V)``.

Conventions (checked against the authors' ``nchwBRA``): the routing is one per
region, shared by all heads, made from the full-width pooled q and k (so
``A^r`` sums the heads' affinities; with GQA head ``h`` pairs with its kv head),
and from q and k detached, as the authors' code does: gradients flow through
the token-to-token attention only; ``k`` is capped at the number of regions;
affinities are compared in float64 and ties go to the earlier region, so float32
and float64 calls route alike unless two are within float32 rounding.
Non-causal (a vision mechanism): a region may route to any region.

Forms: ``reference`` (region graph, routing and token mask materialised) and
``selected_blocks`` (the run-time block selection kernel, one selection per
region): ``O(N k region_size)``.
"""
from __future__ import annotations

import torch

from ..kernels.positions import repeat_kv
from ..kernels.selected_blocks import selected_block_attention
from ..kernels.token_blocks import block_means
from ..masks.selection import BlockSelection, block_selection
from ..params import Param
from ..reference import materialised_attention
from ..registry import MechanismSpec, register
from ..validation import check_int

PAPER = "BiFormer: Vision Transformer with Bi-Level Routing Attention"


def region_affinity(q, k, region_size: int) -> torch.Tensor:
    """``A^r = Q^r (K^r)^T`` over the full width (summed over heads), float64, ``(B, R, R)``."""
    qr = block_means(q.detach(), region_size, torch.float64)  # summed in float64, q itself never converted
    kr = repeat_kv(block_means(k.detach(), region_size, torch.float64), q.shape[1])
    return torch.einsum("bhid,bhjd->bij", qr, kr)


def routed_regions(q, k, *, region_size: int, top_k: int) -> torch.Tensor:
    """``I^r``: each region's ``min(top_k, R)`` routed regions, long ``(B, R, k)`` (ties to the earlier region)."""
    check_int("region_size", region_size)
    check_int("top_k", top_k)
    affinity = region_affinity(q, k, region_size)
    return affinity.sort(dim=-1, descending=True, stable=True).indices[..., :top_k]


def routing_selection(q, k, *, region_size: int, top_k: int) -> BlockSelection:
    """The routing as a :class:`~attnkit.masks.selection.BlockSelection`: one row per region and head."""
    index = routed_regions(q, k, region_size=region_size, top_k=top_k)
    blocks = index[:, None].expand(-1, q.shape[1], -1, -1)
    return block_selection(blocks.contiguous(), block_q=region_size, block_k=region_size, q_len=q.shape[2],
                           kv_len=k.shape[2])


def _reference(q, k, v, *, causal, mask, scale, region_size, top_k):
    check_int("region_size", region_size)
    check_int("top_k", top_k)
    N = q.shape[2]
    affinity = region_affinity(q, k, region_size)
    rank = affinity.sort(dim=-1, descending=True, stable=True).indices.argsort(dim=-1)
    routed = rank < top_k  # (B, R, R): region i routes to region j
    region = torch.arange(N, device=q.device) // region_size
    allowed = routed[:, region][..., region][:, None]  # every head: token i sees token j when region(i) -> region(j)
    return materialised_attention(q, k, v, causal=False, mask=allowed, scale=scale)


def _fast(q, k, v, *, causal, mask, scale, region_size, top_k):
    sel = routing_selection(q, k, region_size=region_size, top_k=top_k)
    return selected_block_attention(q, k, v, sel, scale=scale, causal=False)


def _flops(batch, heads, q_len, kv_len, head_dim, causal, region_size=49, top_k=4, **_):
    regions = -(-q_len // region_size)
    return 4 * batch * heads * head_dim * q_len * min(top_k, regions) * region_size + 2 * batch * heads * regions**2 * head_dim


register(MechanismSpec(
    name="bilevel_routing",
    family="content-sparse",
    papers=(PAPER,),
    patterns=frozenset({"noncausal-self"}),
    reference=_reference,
    fast={"selected_blocks": _fast},
    params={"region_size": Param(49, int, "tokens per region (a 7 x 7 window of a map laid out region by region)",
                                 low=1),
            "top_k": Param(4, int, "regions each region routes to", low=1)},
    test_params={"region_size": 8, "top_k": 3},
    supports_mask=False,
    flops=_flops,
    complexity="O(N top_k region_size + (N / region_size)^2)",
    summary="regions route to their top-k regions by mean q . mean k; tokens attend to the routed regions' tokens",
))
