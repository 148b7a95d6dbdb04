"""NSA's compression branch and its block selection in one pass over the compressed keys.

The compression branch's weights ``p_t^cmp = Softmax(q_t^T K~_t^cmp)`` serve
twice: as the branch's attention (``o_t^cmp = p_t^cmp V~_t^cmp``) and as the
selection branch's block scores (equations 8-10 of the paper). So the scores
are computed once per query chunk, and the same normalised weights give the
output and, summed over the query heads of a kv group, the block importance and
the chunk's top-``n`` blocks. Only the output, the row log-sum-exp and the
chosen blocks are kept: memory is ``O(N n)`` for the selection and ``O(chunk)``
for the rest, the importance of a chunk is dropped once its blocks are chosen.

The selection reads a quarter of the weights (with four query heads a group):
equation 10 (the sum over the group's heads) is taken first, straight into one
zero-padded buffer, and equation 9 and the top-``n`` then run for
``SELECT_ROWS`` tokens at a time (a whole number of chunks), only over the
selection blocks up to the last of those tokens' (the later ones are begun by
none of them). At N=32768, on one loaded CPU core, that took the selection
from about 1.3 to under 0.4 CPU s of the branch's forward.

The backward is FlashAttention-2's: each chunk's weights are recomputed from
the saved log-sum-exp (one matmul, no second softmax, no importance) and give
dQ, dK~, dV~; the row terms ride in the matmuls (``[q, -lse] . [k~, 1]`` and
``[dO, -delta] . [v~, 1]``, :mod:`~attnkit.kernels.row_terms`). Scores are in base 2
(``log2 e`` folded into the scale): ``exp_`` is faster than ``exp2_`` on scores
near their row's maximum but, in PyTorch 2.13 on CPU, takes a slow path for
inputs far below it (a masked ``-inf``, or a weight under ``1e-38``) that made it
several times slower on sharp attention; ``exp2_`` runs at one speed.
A chunk reads only the compressed blocks its last query can see and masks only
the columns its first query cannot. Chunks are small (the default budget gives
64 queries at N=32768, 256 at 8192): the scores of one stay in cache between
the passes over them, which measured 1.2x (32k) to 1.6x (8k) faster than
chunks of 16M scores, the matmuls' smaller shapes included.
"""
from __future__ import annotations

import math

import torch

from .nsa_branches import compressed_count, compressed_visible, importance_from_sums, top_blocks_at
from .row_terms import row_dot, with_ones

LOG2E = 1.4426950408889634
BUDGET = 1 << 20  # score elements of one query chunk
SELECT_ROWS = 256  # tokens whose blocks are chosen together (a whole number of chunks, at least one)


def compression_and_selection(q, kc, vc, qpos, *, scale: float, block: int, stride: int, select_block: int,
                              select_count: int, kv_len: int, budget: int = BUDGET):
    """``(o_cmp (B, H, Nq, Dv), blocks (B, Hkv, Nq, n), valid)``: the compression branch's output
    (differentiable in ``q, kc, vc``) and the selection branch's top-``n`` blocks per token and kv group.

    ``budget`` bounds the score elements of one query chunk (an execution knob).
    """
    return _CompressionBranch.apply(q, kc, vc, qpos, scale, block, stride, select_block, select_count, kv_len,
                                    budget)


def matmul_shapes(q, kc, qpos, *, block: int, stride: int, budget: int = BUDGET) -> list[tuple[int, int, int, int]]:
    """The branch's batched matmuls, one ``(batch * kv heads, query rows, compressed keys, head_dim)`` per
    query chunk: two of these sizes forward and five backward (to time the branch against its matmuls alone)."""
    chunks = _Chunks(q, kc, qpos, block, stride, budget)
    B, D = q.shape[0], q.shape[3]
    return [(B * chunks.Hkv, chunks.g * (c1 - c0), seen, D) for c0, c1, seen, _ in chunks.bounds if seen]


class _Chunks:
    """The query chunks: for each, its rows and how many compressed blocks it reads and sees unmasked."""

    def __init__(self, q, kc, qpos, block, stride, budget):
        B, H, self.Nq, self.D = q.shape
        self.Hkv, n_cmp = kc.shape[1], kc.shape[2]
        self.g = H // self.Hkv
        size = max(16, min(self.Nq, budget // max(1, B * H * n_cmp)))
        self.size = size
        self.per_top = max(1, SELECT_ROWS // size)  # chunks whose blocks are chosen together
        self.bounds = []
        for c0 in range(0, self.Nq, size):
            c1 = min(self.Nq, c0 + size)
            seen = min(n_cmp, compressed_count(int(qpos[c1 - 1]) + 1, block, stride))
            open_ = min(seen, compressed_count(int(qpos[c0]) + 1, block, stride))
            self.bounds.append((c0, c1, seen, open_))

    def rows(self, x, c0, c1):
        """``x (B, H, N, E)`` rows ``c0:c1`` as ``(B, Hkv, g * C, E)``: the queries of a kv group side by side."""
        B, _, _, E = x.shape
        return x[:, :, c0:c1].reshape(B, self.Hkv, self.g * (c1 - c0), E)

    def rows_with(self, x, term, c0, c1):
        """:meth:`rows` with one more column, the chunk's ``term (B, Hkv, g, C)``: ``(B, Hkv, g * C, E + 1)``."""
        B, _, _, E = x.shape
        out = x.new_empty(B, self.Hkv, self.g, c1 - c0, E + 1)
        out[..., :E] = x[:, :, c0:c1].view(B, self.Hkv, self.g, c1 - c0, E)
        out[..., E] = term
        return out.view(B, self.Hkv, self.g * (c1 - c0), E + 1)

    def by_chunk(self, x, c0, c1):
        """Rows ``c0:c1`` of a per-row term ``x (B, Hkv, g * N)`` kept chunk by chunk (each chunk's ``g * C`` rows
        in its matmuls' order, one contiguous run): ``(B, Hkv, g * C)``."""
        return x[:, :, self.g * c0 : self.g * c1]

    def back(self, x, c0, c1):
        """The inverse of :meth:`rows`: ``(B, Hkv, g * C, E)`` -> ``(B, H, C, E)``."""
        B, _, _, E = x.shape
        return x.view(B, self.Hkv * self.g, c1 - c0, E)


def _scores(qc, kc2, qpos, c0, c1, seen, open_, g, block, stride):
    """Scores of a chunk over its first ``seen`` compressed keys, invisible ones ``-inf``."""
    s = qc @ kc2[:, :, :seen].transpose(-1, -2)
    if open_ < seen:
        hidden = ~compressed_visible(qpos[c0:c1], seen, block, stride, first=open_)
        tail = s.view(*s.shape[:2], g, c1 - c0, seen)[..., open_:]
        tail.masked_fill_(hidden, float("-inf"))
    return s


class _CompressionBranch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, kc, vc, qpos, scale, block, stride, select_block, select_count, kv_len, budget):
        chunks = _Chunks(q, kc, qpos, block, stride, budget)
        B, H, Nq, _ = q.shape
        Hkv, g = chunks.Hkv, chunks.g
        n_blocks = -(-kv_len // select_block)
        span, per_block = block // stride, select_block // stride
        kcs = kc * (scale * LOG2E)
        out = q.new_empty(B, H, Nq, vc.shape[3])
        # each row's maximum score and sum of weights, chunk by chunk; rows that see no compressed block keep a
        # zero sum (log-sum-exp +inf)
        tops, totals = q.new_empty(B, Hkv, g * Nq), q.new_zeros(B, Hkv, g * Nq)
        keep = min(select_count, n_blocks)
        blocks = torch.empty(B, Hkv, Nq, keep, dtype=torch.long, device=q.device)
        valid = torch.empty(B, Hkv, Nq, keep, dtype=torch.bool, device=q.device)
        # the weights summed over each group's heads (equation 10 first) for the rows of up to `chunks.per_top`
        # chunks, whose blocks are then chosen together; compressed block i at column span - 1 + i, the other
        # columns stay zero (the chunks see ever more compressed blocks)
        sums = q.new_zeros(B, Hkv, chunks.per_top * chunks.size, span - 1 + n_blocks * per_block)
        first = 0  # the first token whose blocks are not chosen yet
        for i, (c0, c1, seen, open_) in enumerate(chunks.bounds):
            C = c1 - c0
            if seen:
                s = _scores(chunks.rows(q, c0, c1), kcs, qpos, c0, c1, seen, open_, g, block, stride)
                top = torch.amax(s, -1, keepdim=True, out=chunks.by_chunk(tops, c0, c1)[..., None])
                p = s.sub_(top.clamp_(min=torch.finfo(s.dtype).min)).exp2_()
                total = torch.sum(p, -1, keepdim=True, out=chunks.by_chunk(totals, c0, c1)[..., None])
                p.div_(total.clamp(min=torch.finfo(s.dtype).tiny))
                out[:, :, c0:c1] = chunks.back(p @ vc[:, :, :seen], c0, c1)
                row0 = c0 - first
                torch.sum(p.view(B, Hkv, g, C, seen), 2, out=sums[:, :, row0 : row0 + C, span - 1 : span - 1 + seen])
            else:
                out[:, :, c0:c1] = 0
            if (i + 1) % chunks.per_top == 0 or c1 == Nq:
                # the blocks up to the last token's; later ones are begun by none of the tokens
                used = int(qpos[c1 - 1]) // select_block + 1
                importance = importance_from_sums(sums[:, :, : c1 - first], used, span=span, per_block=per_block)
                blocks[:, :, first:c1], valid[:, :, first:c1] = top_blocks_at(
                    importance, qpos[first:c1], select_block=select_block, count=keep)
                first = c1
        lse = torch.where(totals > 0, tops + totals.log2(), math.inf)  # base 2
        ctx.save_for_backward(q, kc, vc, qpos, out, lse)
        ctx.setup = (scale, block, stride, budget)
        ctx.mark_non_differentiable(blocks, valid)
        return out, blocks, valid

    @staticmethod
    def backward(ctx, d_out, _blocks, _valid):
        q, kc, vc, qpos, out, lse = ctx.saved_tensors
        scale, block, stride, budget = ctx.setup
        chunks = _Chunks(q, kc, qpos, block, stride, budget)
        B, H, Nq, D = q.shape
        g, Dv = chunks.g, vc.shape[3]
        # the row terms ride in the matmuls: [q, -lse] . [k~, 1] = s - lse and [dO, -delta] . [v~, 1] = dP - delta
        kc1, vc1 = with_ones(kc * (scale * LOG2E)), with_ones(vc)
        kcs = kc * scale  # dQ = scale dS K~, the scale taken on the small K~
        neg_lse, neg_delta = lse.neg(), row_dot(d_out, out).neg_()
        dq, dkc, dvc = torch.empty_like(q), torch.zeros_like(kc), torch.zeros_like(vc)
        # dK~ and dV~ by batched matmuls that add into them in place, one batch per (batch, kv head)
        dkc3, dvc3 = dkc.view(B * chunks.Hkv, -1, D), dvc.view(B * chunks.Hkv, -1, Dv)
        for c0, c1, seen, open_ in chunks.bounds:
            if not seen:
                dq[:, :, c0:c1] = 0
                continue
            chunk_rows = (B, chunks.Hkv, g, c1 - c0)
            qc = chunks.rows_with(q, chunks.by_chunk(neg_lse, c0, c1).view(chunk_rows), c0, c1)
            doc = chunks.rows_with(d_out, neg_delta[:, :, c0:c1].view(chunk_rows), c0, c1)
            p = _scores(qc, kc1, qpos, c0, c1, seen, open_, g, block, stride).exp2_()
            rows = p.shape[2]
            dvc3[:, :seen].baddbmm_(p.view(-1, rows, seen).transpose(-1, -2), doc.view(-1, rows, Dv + 1)[..., :Dv])
            ds = p.mul_(doc @ vc1[:, :, :seen].transpose(-1, -2))
            dq[:, :, c0:c1] = chunks.back(ds @ kcs[:, :, :seen], c0, c1)
            dkc3[:, :seen].baddbmm_(ds.view(-1, rows, seen).transpose(-1, -2), qc.view(-1, rows, D + 1)[..., :D])
        return dq, dkc * scale, dvc, None, None, None, None, None, None, None, None
