"""The pieces of Native Sparse Attention shared by its reference and its fast form.

- :func:`compress`: the learned block compression ``phi`` (blocks of ``l`` keys
  or values every ``d`` tokens, an intra-block position encoding added, then a
  two-layer ReLU MLP to one vector), and :func:`compress_by_segments`, the same
  map without copying the overlapping blocks (the fast form's);
- :func:`compressed_weights`: the compression branch's attention weights over
  the compressed keys, causal: a compressed block is seen once all its keys are;
- :func:`block_importance`: the selection scores of the blocks of ``l'`` keys
  from the compression weights (equation 9 of the paper), summed over the query
  heads of a GQA group (equation 10);
- :func:`top_blocks`: the top-``n`` blocks per token and kv group, the initial
  block and the two local blocks always among them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .positions import query_positions


def compress(x, pos, w1, w2, *, block: int, stride: int) -> torch.Tensor:
    """``phi``: ``(B, Hkv, N, E)`` -> ``(B, Hkv, n_cmp, E)``, block ``i`` covering tokens ``i*stride .. i*stride+block-1``."""
    B, Hkv, N, E = x.shape
    n = compressed_count(N, block, stride)
    if n == 0:
        return x.new_zeros(B, Hkv, 0, w2.shape[1])
    blocks = x[:, :, : (n - 1) * stride + block].unfold(2, block, stride)  # (B, Hkv, n, E, block)
    flat = (blocks.transpose(-1, -2) + pos).reshape(B, Hkv, n, block * E)
    return F.relu(flat @ w1) @ w2


def compress_by_segments(x, pos, w1, w2, *, block: int, stride: int) -> torch.Tensor:
    """:func:`compress` without copying the overlapping blocks (``stride`` must divide ``block``).

    Block ``i`` is the ``m = block / stride`` stride segments ``i .. i + m - 1``, so its first layer is
    ``vec(block_i + P) W1 = vec(P) W1 + sum_j seg_{i+j} W1_j`` with ``W1_j`` the rows of ``W1`` that read
    segment ``j`` of a block: one matmul of every segment against all ``m`` row groups, then ``m`` shifted
    sums. Same products as :func:`compress`, summed in another order; the unfolded copy (and the
    scatter-add of its backward) is gone.
    """
    B, Hkv, N, E = x.shape
    n = compressed_count(N, block, stride)
    if n == 0:
        return x.new_zeros(B, Hkv, 0, w2.shape[1])
    m, hidden = block // stride, w1.shape[1]
    segments = x[:, :, : (n + m - 1) * stride].reshape(B, Hkv, n + m - 1, stride * E)
    # (stride E, m hidden): column group j holds W1_j
    by_segment = segments @ w1.reshape(m, stride * E, hidden).transpose(0, 1).reshape(stride * E, m * hidden)
    by_segment = by_segment.view(B, Hkv, n + m - 1, m, hidden)
    first = pos.reshape(block * E) @ w1
    for j in range(m):
        first = first + by_segment[:, :, j : j + n, j]
    return F.relu(first) @ w2


def compressed_count(n_tokens: int, block: int, stride: int) -> int:
    return 0 if n_tokens < block else (n_tokens - block) // stride + 1


def compressed_visible(qpos, n_cmp: int, block: int, stride: int) -> torch.Tensor:
    """``(len(qpos), n_cmp)``: compressed block ``i`` is visible to a query at or after its last key ``i*stride+block-1``."""
    return torch.arange(n_cmp, device=qpos.device) * stride + block - 1 <= qpos[:, None]


def compressed_weights(q, kc, visible, scale: float) -> torch.Tensor:
    """Softmax of ``q . kc`` over the visible compressed blocks, ``(B, H, Nq, n_cmp)``; none visible: zeros."""
    B, H, Nq, D = q.shape
    Hkv, n = kc.shape[1], kc.shape[2]
    if n == 0:
        return q.new_zeros(B, H, Nq, 0)
    s = (q.reshape(B, Hkv, H // Hkv * Nq, D) @ (kc * scale).transpose(-1, -2)).view(B, H, Nq, n)
    s = s.masked_fill(~visible, float("-inf"))
    top = s.amax(-1, keepdim=True).clamp(min=torch.finfo(s.dtype).min)
    e = torch.exp(s - top)
    return e / e.sum(-1, keepdim=True).clamp(min=torch.finfo(s.dtype).tiny)


def block_importance(p_cmp, kv_heads: int, n_blocks: int, *, block: int, stride: int, select_block: int):
    """Equations 9-10: ``(B, H, Nq, n_cmp)`` -> ``(B, Hkv, Nq, n_blocks)``.

    Each compressed block counts once per stride segment it shares with a
    selection block: ``p_slc[j] = sum_{m < l'/d} sum_{n < l/d} p_cmp[(l'/d) j + m - n]``
    (the paper's equation with 0-based block numbers): first the segment sums
    ``seg[s] = sum_n p_cmp[s - n]`` (shifted reads of ``p_cmp`` padded once in front),
    then ``p_slc[j] = sum_m seg[(l'/d) j + m]`` (strided reads), then the sum over a
    group's query heads.
    """
    B, H, Nq, n = p_cmp.shape
    per_block, span = select_block // stride, block // stride
    segments = n_blocks * per_block
    padded = F.pad(p_cmp, (span - 1, max(0, segments - n)))
    seg = padded[..., span - 1 : span - 1 + segments]
    for shift in range(1, span):  # a compressed block i covers segments i .. i + span - 1
        seg = seg + padded[..., span - 1 - shift : span - 1 - shift + segments]
    p_slc = seg[..., 0::per_block]
    for m in range(1, per_block):
        p_slc = p_slc + seg[..., m::per_block]
    return p_slc.reshape(B, kv_heads, H // kv_heads, Nq, n_blocks).sum(2)


def top_blocks(importance, q_len: int, kv_len: int, *, select_block: int, count: int):
    """The ``count`` best blocks per (batch, kv group, token) among those begun by the token: block 0 and the
    token's block and the one before always; ties go to the earlier block. Returns ``(blocks, valid)``."""
    return top_blocks_at(importance, query_positions(q_len, kv_len, importance.device), select_block=select_block,
                         count=count)


def top_blocks_at(importance, qpos, *, select_block: int, count: int):
    """:func:`top_blocks` for the tokens at positions ``qpos`` (``importance`` has one row per token)."""
    n_blocks = importance.shape[-1]
    current = qpos // select_block
    j = torch.arange(n_blocks, device=importance.device)
    forced = (j == 0) | (j == current[:, None]) | (j == current[:, None] - 1)
    begun = j <= current[:, None]
    # (Nq, n_blocks) tables, then one pass over the scores: forced blocks +inf, blocks not begun -inf
    fixed = forced | ~begun
    score = torch.where(fixed, torch.where(forced, float("inf"), float("-inf")).to(importance.dtype), importance)
    keep = min(count, n_blocks)
    best, index = score.topk(keep, dim=-1, sorted=False)
    threshold = best.amin(-1, keepdim=True)
    # a row whose last place is tied with a block left out (top-k may pick any of them) is redone by a stable
    # sort: more than `keep` blocks score at least the threshold; tied invalid blocks (fewer begun blocks than
    # places) do not matter
    tied = ((score >= threshold).sum(-1) > keep) & (threshold[..., 0] > float("-inf"))
    if tied.any():
        index[tied] = score[tied].sort(dim=-1, descending=True, stable=True).indices[:, :keep]
    return index, score.gather(-1, index) > float("-inf")
