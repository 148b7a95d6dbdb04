"""Block top-k by pooled scores: the block-sparse prefill baseline of "The Sparse Frontier: Sparse Attention
Trade-offs in Transformer LLMs" (Nawrot et al., 2025).

Queries and keys are cut into blocks of ``B = block`` tokens and mean-pooled;
each (query block, key block) tile is scored by its pooled affinity, and each
query block attends exactly to its ``top_k`` best tiles::

    qbar_r = mean(Q[r B : (r+1) B]),   kbar_c = mean(K[c B : (c+1) B])
    T(r, c) = qbar_r . kbar_c / sqrt(d)                  (c <= r)
    kept(r) = {r} U Topk_{c < r}(T(r, c), top_k - 1)

Conventions: the diagonal tile is always kept and counts toward ``top_k`` (a
query always sees itself, as MoBA's current block); ties go to the earlier
tile; a last, partial block is pooled over its real tokens; one layout per
query head (the pooled key of a GQA group's kv head). The estimate costs
``O(N^2 d / B^2)``, negligible beside the attention.
"""
from __future__ import annotations

import torch

from ..builders.estimated_sparse import Estimator, block_count, register_estimated_sparse
from ..kernels.positions import repeat_kv
from ..kernels.token_blocks import block_means
from ..params import Param

PAPER = "The Sparse Frontier: Sparse Attention Trade-offs in Transformer LLMs"


def _top(tiles: torch.Tensor, top_k: int) -> torch.Tensor:
    R = tiles.shape[-1]
    r = torch.arange(R, device=tiles.device)
    past = r[None, :] < r[:, None]
    ordered, order = tiles.masked_fill(~past, float("-inf")).sort(dim=-1, descending=True, stable=True)
    take = (torch.arange(R, device=tiles.device) < top_k - 1) & (ordered > float("-inf"))
    return torch.zeros_like(take).scatter(-1, order, take) | (r[None, :] == r[:, None])


def block_topk_layout(q, k, *, scale, block, top_k) -> torch.Tensor:
    tiles = (block_means(q, block) @ repeat_kv(block_means(k, block), q.shape[1]).transpose(-1, -2)) * scale
    return _top(tiles, top_k)


def reference_layout(q, k, *, scale, block, top_k) -> torch.Tensor:
    """From the equations in float64: pooled means by slicing, per-row ranking by sorting a list."""
    B, H, N, _ = q.shape
    keys = repeat_kv(k, H).double()
    R = block_count(N, block)
    qbar = torch.stack([q.double()[:, :, r * block:(r + 1) * block].mean(2) for r in range(R)], 2)
    kbar = torch.stack([keys[:, :, c * block:(c + 1) * block].mean(2) for c in range(R)], 2)
    T = qbar @ kbar.transpose(-1, -2) * scale
    keep = torch.zeros(B, H, R, R, dtype=torch.bool, device=q.device)
    for b in range(B):
        for h in range(H):
            for r in range(R):
                best = sorted(range(r), key=lambda c: (-float(T[b, h, r, c]), c))[: top_k - 1]
                keep[b, h, r, best + [r]] = True
    return keep


register_estimated_sparse(
    name="block_topk",
    paper=PAPER,
    estimator=Estimator(block_topk_layout, reference_layout),
    params={"block": Param(128, int, "tokens per tile (query and key blocks)", low=1),
            "top_k": Param(8, int, "tiles per query block, the diagonal tile included", low=1)},
    test_params={"block": 8, "top_k": 3},
    check=lambda **_: None,
    summary="prefill: each query block attends its top-k key blocks by mean-pooled q . k, the diagonal always",
    complexity="O(N top_k B d)",
)
