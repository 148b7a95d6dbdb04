"""AnchorAttention: stripes whose scores come close to an anchor (Zhang et al., "AnchorAttention:
Difference-Aware Sparse Attention with Stripe Granularity", 2025).

In long-prompt attention the largest scores sit in the first tokens and in the
local window, whatever the input. Their maximum, the *anchor*, is cheap to
compute exactly, and a key matters to a block of queries when its score comes
within ``theta`` of it. Queries are cut into blocks of ``B = block`` tokens;
for query ``i`` of block ``r`` (``rB <= i < (r+1)B``)::

    x_a(i) = max_{j in A(i)} q_i . k_j / sqrt(d),   A(i) = {j < init} U {rB <= j <= i}   (the anchor)
    abar_r = mean_{i in block r} x_a(i),             qbar_r = mean_{i in block r} q_i
    C_r    = {init <= j < rB :  abar_r - qbar_r . k_j / sqrt(d) < theta}                (the stripes)

and query ``i`` attends exactly ``{j < init, j <= i} U C_r U {rB <= j <= i}``:
the first ``init`` keys, the stripes its block chose (whole columns of the
block, a finer unit than key blocks) and its own block, causal inside. Since
``qbar_r . k_j`` is the mean of the block's scores on key ``j``, a stripe is
kept when its score falls short of the anchor by less than ``theta`` on average
over the block: ``theta`` is a log-ratio of attention weights.

Conventions: one choice per query head (a GQA group's heads choose alone); a
last, partial block averages its real queries; the estimate runs in the input
dtype and is not differentiable (gradients flow through the attention over the
kept keys). The fast form ``stripes`` gathers each block's stripe keys and runs
them with the first keys and the diagonal block in one softmax.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels.positions import repeat_kv
from ..kernels.token_blocks import block_means, last_block, whole_blocks
from ..params import Param
from ..reference import materialised_attention
from ..registry import MechanismSpec, register

PAPER = "AnchorAttention: Difference-Aware Sparse Attention with Stripe Granularity"


def _anchors(q, k, *, block, init, budget: int = 1 << 22) -> torch.Tensor:
    """``x_a(i) / scale`` for every query, ``(B, H, N)``: the max of ``q_i . k_j`` over the first ``init`` keys and
    the query's own block up to itself, a few whole blocks at a time (read in place), a last, shorter block alone."""
    B, H, N, D = q.shape
    first = k[:, :, :min(init, N)]
    t = torch.arange(block, device=q.device)
    future = t[None, :] > t[:, None]

    def of(qb, kb):  # (B, H, c, n, D) blocks of n tokens -> their anchors (B, H, c * n)
        n = qb.shape[3]
        local = (qb @ kb.transpose(-1, -2)).masked_fill(future[:n, :n], float("-inf")).amax(-1).flatten(2)
        if first.shape[2] == 0:
            return local
        return torch.maximum(local, (qb.flatten(2, 3) @ first.transpose(-1, -2)).amax(-1))

    qw, kw = whole_blocks(q, block), whole_blocks(k, block)
    step = max(1, budget // max(1, B * H * block * (block + first.shape[2])))
    parts = [of(qw[:, :, c:c + step], kw[:, :, c:c + step]) for c in range(0, qw.shape[2], step)]
    if N % block:
        parts.append(of(last_block(q, block)[:, :, None], last_block(k, block)[:, :, None]))
    return torch.cat(parts, dim=2)


def anchor_stripes(q, k, *, scale, block, init, theta, chunk: int = 64) -> torch.Tensor:
    """Bool ``(B, H, R, N)``: the stripes ``C_r`` of every query block."""
    B, H, N, D = q.shape
    k = repeat_kv(k, H)
    R = -(-N // block)
    real = torch.arange(R * block, device=q.device).view(R, block) < N
    anchor = F.pad(_anchors(q, k, block=block, init=init), (0, R * block - N)).view(B, H, R, block)
    counts = real.sum(-1).to(q.dtype)
    abar = (anchor * scale).masked_fill(~real, 0.0).sum(-1) / counts  # (B, H, R)
    qbar = block_means(q, block)  # (B, H, R, D)
    j = torch.arange(N, device=q.device)
    candidates = (j >= init) & (j < torch.arange(R, device=q.device)[:, None] * block)  # (R, N)
    out = []
    for r0 in range(0, R, chunk):
        gap = abar[:, :, r0:r0 + chunk, None] - (qbar[:, :, r0:r0 + chunk] @ k.transpose(-1, -2)) * scale
        out.append((gap < theta) & candidates[r0:r0 + chunk])
    return torch.cat(out, dim=2)


def anchor_attention_stripes(q, k, v, *, causal, mask, scale, block, init, theta):
    B, H, N, D = q.shape
    with torch.no_grad():
        chosen = anchor_stripes(q.detach(), k.detach(), scale=scale, block=block, init=init, theta=theta)
    k, v = repeat_kv(k, H), repeat_kv(v, H)
    outs = []
    for r in range(chosen.shape[2]):
        lo, hi = r * block, min(N, (r + 1) * block)
        width = max(1, int(chosen[:, :, r].sum(-1).max()))
        used, index = chosen[:, :, r].to(torch.int8).topk(width, dim=-1, sorted=False)
        used = used > 0
        first = min(init, lo)
        keys = torch.cat([k[:, :, :first], k.gather(2, index[..., None].expand(-1, -1, -1, D)), k[:, :, lo:hi]], 2)
        values = torch.cat([v[:, :, :first], v.gather(2, index[..., None].expand(-1, -1, -1, v.shape[-1])),
                            v[:, :, lo:hi]], 2)
        i = torch.arange(lo, hi, device=q.device)
        ok = torch.cat([torch.ones(B, H, hi - lo, first, dtype=torch.bool, device=q.device),
                        used[:, :, None, :].expand(-1, -1, hi - lo, -1),
                        (torch.arange(lo, hi, device=q.device) <= i[:, None]).expand(B, H, -1, -1)], -1)
        scores = (q[:, :, lo:hi] @ keys.transpose(-1, -2)) * scale
        outs.append(torch.softmax(scores.masked_fill(~ok, float("-inf")), -1) @ values)
    return torch.cat(outs, dim=2)


def reference_mask(q, k, *, scale, block, init, theta) -> torch.Tensor:
    """The kept pairs ``(B, H, N, N)`` from the equations in float64, one query block at a time."""
    B, H, N, _ = q.shape
    S = (q.double() @ repeat_kv(k, H).double().transpose(-1, -2)) * scale
    j = torch.arange(N, device=q.device)
    keep = torch.zeros(B, H, N, N, dtype=torch.bool, device=q.device)
    for r in range(-(-N // block)):
        lo, hi = r * block, min(N, (r + 1) * block)
        anchors = []
        for i in range(lo, hi):
            region = (j < init) | ((j >= lo) & (j <= i))
            anchors.append(S[:, :, i, region].max(-1).values)
        abar = torch.stack(anchors, -1).mean(-1)  # (B, H)
        qbar = q.double()[:, :, lo:hi].mean(2)
        gap = abar[..., None] - (qbar[:, :, None, :] @ repeat_kv(k, H).double().transpose(-1, -2))[:, :, 0] * scale
        stripes = (gap < theta) & (j >= init) & (j < lo)
        for i in range(lo, hi):
            keep[:, :, i] = stripes | (((j < init) | (j >= lo)) & (j <= i))
    return keep


def _reference(q, k, v, *, causal, mask, scale, block, init, theta):
    kept = reference_mask(q.detach(), k.detach(), scale=scale, block=block, init=init, theta=theta)
    return materialised_attention(q, k, v, causal=False, mask=kept, scale=scale)


def attended(q, k, rows, *, scale, block, init, theta):
    """Bool ``(B, H, len(rows), N)`` (the keys query rows ``rows`` read) and the density of the whole call."""
    N = k.shape[2]
    chosen = anchor_stripes(q, k, scale=scale, block=block, init=init, theta=theta)
    j = torch.arange(N, device=q.device)
    own = ((j < init) | (j >= j[:, None] // block * block)) & (j <= j[:, None])  # (N, N) first keys, own block
    sizes = (N - torch.arange(chosen.shape[2], device=q.device) * block).clamp(max=block)
    pairs = float(own.sum()) * q.shape[0] * q.shape[1] + float((chosen.sum(-1) * sizes).sum())
    kept = chosen[:, :, rows // block] | own[rows]
    return kept, pairs / (q.shape[0] * q.shape[1] * N * (N + 1) / 2)


register(MechanismSpec(
    name="anchor_attention",
    family="training-free-sparse",
    papers=(PAPER,),
    patterns=frozenset({"causal-self"}),
    reference=_reference,
    fast={"stripes": anchor_attention_stripes},
    step=None,
    params={"block": Param(128, int, "queries per block (one stripe choice per block) and the local window", low=1),
            "init": Param(128, int, "first keys every query reads (part of the anchor region)", low=0),
            "theta": Param(12.0, float, "largest gap below the anchor (mean over the block) a kept stripe may have",
                           low=0.0)},
    test_params={"block": 16, "init": 8, "theta": 1.0},
    supports_mask=False,
    complexity="O(N^2 d / block) estimate + O(N (init + stripes + block) d)",
    summary="prefill: each query block keeps the key stripes scoring within theta of the anchor (the max over the "
            "first keys and the local block), attended exactly with them",
    selection_reads_whole_prompt=True, extra={"attended": attended},
))
