"""The pieces of Native Sparse Attention shared by its reference and its fast form.

- :func:`compress`: the learned block compression ``phi`` (blocks of ``l`` keys
  or values every ``d`` tokens, an intra-block position encoding added, then a
  two-layer ReLU MLP to one vector), and :func:`compress_by_segments`, the same
  map without copying the overlapping blocks (the fast form's);
- :func:`compressed_weights`: the compression branch's attention weights over
  the compressed keys, causal: a compressed block is seen once all its keys are;
- :func:`block_importance`: the selection scores of the blocks of ``l'`` keys
  from the compression weights (equation 9 of the paper), summed over the query
  heads of a GQA group (equation 10), and :func:`importance_from_sums`, equation 9
  alone on weights already summed over the group (the fast form's, a chunk at a time);
- :func:`top_blocks`: the top-``n`` blocks per token and kv group, the initial
  block and the two local blocks always among them, in ascending order.
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


def compressed_visible(qpos, n_cmp: int, block: int, stride: int, first: int = 0) -> torch.Tensor:
    """``(len(qpos), n_cmp - first)``: whether compressed block ``i`` (``first <= i < n_cmp``) is visible to a query,
    that is the query is at or after the block's last key ``i*stride+block-1``."""
    return torch.arange(first, n_cmp, device=qpos.device) * stride + block - 1 <= qpos[:, None]


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

    Both equations are sums, so the one over a group's query heads (10) is taken first and equation 9 then
    reads a quarter of the weights (four heads a group) by :func:`importance_from_sums`.
    """
    B, H, Nq, n = p_cmp.shape
    span, per_block = block // stride, select_block // stride
    summed = p_cmp.reshape(B, kv_heads, H // kv_heads, Nq, n).sum(2)
    padded = F.pad(summed, (span - 1, max(0, n_blocks * per_block - n)))
    return importance_from_sums(padded, n_blocks, span=span, per_block=per_block)


def importance_from_sums(padded, n_blocks: int, *, span: int, per_block: int):
    """Equation 9 on compression weights ``padded (..., span - 1 + n_blocks * per_block)`` (at least): ``span - 1``
    zeros, then the weight of compressed block ``i`` at ``span - 1 + i`` (zeros past the last), where a
    compressed block spans ``span = l/d`` stride segments and a selection block ``per_block = l'/d``.

    Each compressed block counts once per stride segment it shares with a selection block:
    ``p_slc[j] = sum_{m < l'/d} sum_{n < l/d} p_cmp[(l'/d) j + m - n]`` (the paper's equation with 0-based block
    numbers): first the segment sums ``seg[s] = sum_n p_cmp[s - n]`` (shifted reads of the padded weights),
    then ``p_slc[j] = sum_m seg[(l'/d) j + m]`` (strided reads). Returns ``(..., n_blocks)``.
    """
    segments = n_blocks * per_block
    seg = padded[..., span - 1 : span - 1 + segments]
    for shift in range(1, span):  # a compressed block i covers segments i .. i + span - 1
        seg = seg + padded[..., span - 1 - shift : span - 1 - shift + segments]
    p_slc = seg[..., 0::per_block]
    for m in range(1, per_block):
        p_slc = p_slc + seg[..., m::per_block]
    return p_slc


def top_blocks(importance, q_len: int, kv_len: int, *, select_block: int, count: int):
    """The ``count`` best blocks per (batch, kv group, token) among those begun by the token: block 0 and the
    token's block and the one before always; ties go to the earlier block. Returns ``(blocks, valid)``, each
    row's valid blocks in ascending order, then its unused slots."""
    return top_blocks_at(importance, query_positions(q_len, kv_len, importance.device), select_block=select_block,
                         count=min(count, importance.shape[-1]))


def top_blocks_at(importance, qpos, *, select_block: int, count: int):
    """:func:`top_blocks` for the tokens at positions ``qpos``, ``count`` slots (at most the sequence's blocks).

    ``importance`` has one row per token and a column at least for every block up to the last token's; the
    blocks after it are begun by none of the tokens and are not read.
    """
    current = qpos // select_block
    if not qpos.numel():
        return (torch.zeros(*importance.shape[:-1], count, dtype=torch.long, device=importance.device),
                torch.zeros(*importance.shape[:-1], count, dtype=torch.bool, device=importance.device))
    used = int(current.max()) + 1
    score = importance[..., :used].clone()
    # forced blocks +inf (block 0, the token's block and the one before), blocks not begun -inf: only the columns
    # after the earliest token's block can be not begun
    score[..., 0] = float("inf")
    local = torch.stack([current, (current - 1).clamp(min=0)], -1)
    score.scatter_(-1, local.expand(*score.shape[:-1], 2), float("inf"))
    begun_by_all = int(current.min()) + 1
    if begun_by_all < used:
        later = torch.arange(begun_by_all, used, device=score.device)
        score[..., begun_by_all:].masked_fill_(later > current[:, None], float("-inf"))
    keep = min(count, used)
    best, index = score.topk(keep, dim=-1, sorted=False)
    threshold = best.amin(-1, keepdim=True)
    # a row whose last place is tied with a block left out (top-k may pick any of them) is redone by a stable
    # sort: more than `keep` blocks score at least the threshold; tied invalid blocks (fewer begun blocks than
    # places) do not matter
    tied = ((score >= threshold).sum(-1) > keep) & (threshold[..., 0] > float("-inf"))
    if tied.any():
        index[tied] = score[tied].sort(dim=-1, descending=True, stable=True).indices[:, :keep]
    index = index.sort(-1).values
    valid = score.gather(-1, index) > float("-inf")
    if keep < count:  # fewer blocks than places: the rest unused
        index = torch.cat([index, index.new_zeros(*index.shape[:-1], count - keep)], -1)
        valid = torch.cat([valid, valid.new_zeros(*valid.shape[:-1], count - keep)], -1)
    return index, valid
