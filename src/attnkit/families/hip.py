"""HiP: hierarchically pruned attention, a tree search for each query block's top key blocks (Lee et al.,
"HiP Attention: Sparse Sub-Quadratic Attention with Hierarchical Attention Pruning", 2024).

Attention locality (nearby keys score alike) lets a coarse node of the key
sequence be judged by one of its blocks. Queries and keys are cut into blocks
of ``B = block`` tokens; query block ``r`` searches its ``P = r`` past key
blocks for ``K = top_k - 1`` of them:

- start with ``K`` nodes covering the past evenly: node ``i`` holds key blocks
  ``[floor(iP/K), floor((i+1)P/K))``;
- repeat until every node holds one key block: split each node of ``m`` blocks
  starting at ``s`` into a left child ``[s, s + floor(m/2))`` and a right child
  ``[s + floor(m/2), s + m)``; score each non-empty child by its first key block,

      score(child) = max_{i in query block r, j in key block start(child)} q_i . k_j

  and keep the ``K`` best children (the others are pruned with all their keys);
- query block ``r`` attends exactly its ``K`` found key blocks and its own
  (diagonal) block, causal inside; with ``P <= K`` it attends its whole past.

Each level scores ``2K`` children per query block and there are ``log2(P / K)``
levels: ``O(N log N)`` for the search, ``O(N top_k B)`` for the attention. A left
child (and the right child of a one-block node) starts on its node's first block,
so it inherits the node's score: a level computes ``K`` block products, not ``2K``,
and only for the query blocks that still have a node to split.

Conventions (checked against the authors' reference search, their numba draft
``masking_iteration_draft``): a child is scored by the maximum over the query
block and the child's first key block; empty children are never kept; the
diagonal block is always attended and counts toward ``top_k`` (as block top-k
and MoBA), the search runs over the blocks strictly before it; score ties go
to the earlier child; a last, partial query block is scored by its real
queries only; one search per query head (a GQA group's heads search alone).

Readings where this form and the authors' code differ in setting, not in the
search: their defaults cut queries into blocks of ``b_q = 32`` and keys into
blocks of ``b_k = 2`` with a budget of ``k = 512`` keys (256 key blocks), and
their attention kernel adds a 128-key sliding window; here queries and keys
share one block size (the square tiles of the block-sparse engines), the
budget ``top_k`` counts blocks, and the diagonal block stands for the local
window. A branch's representative is its first key block, as the numba draft
and the ``"first"`` sampling of their first kernel (whose default, ``"random"``,
draws a token inside the branch); their later versions score a branch at its
centre instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..builders.estimated_sparse import Estimator, block_count, register_estimated_sparse
from ..kernels.positions import repeat_kv
from ..kernels.token_blocks import block_windows, last_block, whole_blocks
from ..params import Param

PAPER = "HiP Attention: Sparse Sub-Quadratic Attention with Hierarchical Attention Pruning"


def _block_scores(q, windows, kv_of, searched, starts, block, scratch):
    """``(B, H, S, c)``: max ``q . k`` over query block ``searched[s]`` (its real queries) and key block
    ``starts[..., s, c]`` (always a whole block in the past), key blocks read in place from ``windows``.

    ``scratch = (keys, products)``, buffers for a few query blocks' copied key blocks ``(n c, block D)`` and
    products ``(n, c block, block)`` (``n`` a multiple of ``B H``), reused chunk after chunk: fresh tensors
    this large are new pages the system must map at every chunk, which costs as much as the products."""
    B, H, N, D = q.shape
    whole = N // block
    c = starts.shape[-1]
    chunk = scratch[1].shape[0] // (B * H)
    out = []
    for s0 in range(0, len(searched), chunk):
        rows = searched[s0:s0 + chunk]
        qb = _query_blocks(q, rows, block)  # (B, H, rc, block, D)
        st = starts[:, :, s0:s0 + chunk]
        n = st.numel() // c
        first = kv_of[:, :, None, None] * N + st * block
        keys = torch.index_select(windows, 0, first.flatten(), out=scratch[0][:n * c])
        prod = torch.bmm(keys.view(n, c * block, D), qb.reshape(n, block, D).transpose(1, 2), out=scratch[1][:n])
        prod = prod.view(B, H, len(rows), c, block, block)  # (..., key j, query i)
        if rows[-1] == whole:  # a last, shorter block: its padding queries score nothing
            real = torch.arange(block, device=q.device) < N - whole * block
            prod[:, :, -1].masked_fill_(~real, float("-inf"))
        out.append(prod.amax((-1, -2)))
    return torch.cat(out, dim=2)


def _query_blocks(q, rows, block):
    """``(B, H, len(rows), block, D)``: query blocks ``rows`` (ascending), a last, shorter one zero-padded."""
    B, H, N, D = q.shape
    whole = N // block
    inside = rows[rows < whole]
    parts = [whole_blocks(q, block).index_select(2, inside)]
    if len(inside) < len(rows):
        rest = last_block(q, block)
        parts.append(F.pad(rest, (0, 0, 0, block - rest.shape[2]))[:, :, None])
    return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


def hip_layout(q, k, *, scale, block, top_k, budget: int = 1 << 22) -> torch.Tensor:
    B, H, N, D = q.shape
    R = block_count(N, block)
    K = top_k - 1
    r = torch.arange(R, device=q.device)
    diagonal = r[None, :] == r[:, None]
    if K == 0:
        return diagonal.expand(B, H, R, R).clone()
    keep = (r[None, :] < r[:, None]) & (r[:, None] <= K)  # short pasts: everything
    keep = (keep | diagonal).expand(B, H, R, R).clone()
    if R - 1 <= K:
        return keep
    q, Hkv = q.contiguous(), k.shape[1]  # its blocks are read once per level: views, not copies
    kv_of = (torch.arange(B, device=q.device)[:, None] * Hkv + torch.arange(H, device=q.device) // (H // Hkv))
    windows = block_windows(k, block)  # R - 1 > K >= 1: at least one whole block
    searched = r[r > K]  # query blocks with more than K past blocks
    P = searched[:, None]
    i = torch.arange(K + 1, device=q.device)
    edges = P * i // K
    start, size = edges[:, :-1].expand(B, H, -1, -1), (edges[:, 1:] - edges[:, :-1]).expand(B, H, -1, -1)
    chunk = min(len(searched), max(1, budget // max(1, B * H * K * block * block)))
    scratch = (q.new_empty(chunk * B * H * K, block * D), q.new_empty(chunk * B * H, K * block, block))
    score = _block_scores(q, windows, kv_of, searched, start, block, scratch)
    while bool((size > 1).any()):
        # a child starting where its node starts has the node's first block, so the node's score: only the right
        # children of nodes that split (half > 0) start on a new block; a node of one block keeps it on its right
        half = size // 2
        active = (half > 0).flatten(0, 1).any(0).any(-1).nonzero().squeeze(1)  # query blocks with a node to split
        right = score.clone()
        right[:, :, active] = torch.where(half[:, :, active] > 0, _block_scores(
            q, windows, kv_of, searched[active], (start + half)[:, :, active], block, scratch), score[:, :, active])
        starts = torch.stack([start, start + half], -1).flatten(-2)  # children in start order
        sizes = torch.stack([half, size - half], -1).flatten(-2)
        scores = torch.stack([score, right], -1).flatten(-2).masked_fill(sizes == 0, float("-inf"))
        best = scores.sort(dim=-1, descending=True, stable=True).indices[..., :K].sort(dim=-1).values
        start, size, score = starts.gather(-1, best), sizes.gather(-1, best), scores.gather(-1, best)
    rows = keep[:, :, searched]
    keep[:, :, searched] = rows.scatter(-1, start, True)
    return keep


def reference_layout(q, k, *, scale, block, top_k) -> torch.Tensor:
    """The search from the equations in float64: materialised scores, nodes as Python lists, one row at a time."""
    B, H, N, _ = q.shape
    R = block_count(N, block)
    K = top_k - 1
    S = q.double() @ repeat_kv(k, H).double().transpose(-1, -2)
    keep = torch.zeros(B, H, R, R, dtype=torch.bool, device=q.device)
    for b in range(B):
        for h in range(H):
            for r in range(R):
                rows = slice(r * block, min(N, (r + 1) * block))

                def score(s):
                    return float(S[b, h, rows, s * block:(s + 1) * block].max())

                if r <= K:
                    found = list(range(r))
                else:
                    nodes = [(r * i // K, r * (i + 1) // K - r * i // K) for i in range(K)]
                    while any(m > 1 for _, m in nodes):
                        children = [c for s, m in nodes for c in ((s, m // 2), (s + m // 2, m - m // 2)) if c[1] > 0]
                        nodes = sorted(sorted(children, key=lambda c: (-score(c[0]), c[0]))[:K])
                    found = [s for s, _ in nodes]
                keep[b, h, r, found + [r]] = True
    return keep


register_estimated_sparse(
    name="hip",
    paper=PAPER,
    estimator=Estimator(hip_layout, reference_layout),
    params={"block": Param(64, int, "tokens per query block and per key block", low=1),
            "top_k": Param(8, int, "key blocks each query block attends, its own (diagonal) block included", low=1)},
    test_params={"block": 8, "top_k": 3},
    check=lambda **_: None,
    summary="prefill: each query block finds its top-k key blocks by a hierarchical (binary tree) search scored "
            "by each node's first block, attended exactly with its diagonal block",
    complexity="O(N log N B d) search + O(N top_k B d)",
)
