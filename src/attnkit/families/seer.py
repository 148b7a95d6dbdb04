"""SeerAttention (Gao et al., "SeerAttention: Learning Intrinsic Sparse Attention in Your LLMs").

A learned gate (AttnGate) looks at block-pooled queries and keys and predicts
which key blocks each query block needs; attention then runs on those blocks
only. With blocks of ``B`` tokens, per head::

    Q~ = AvgPool_B(Q) W_q                                   (one row per query block)
    K~ = [MaxPool_B(K); MinPool_B(K); AvgPool_B(K)] W_k      (one row per key block)
    S  = softmax(Q~ K~^T / sqrt(d_gate))                     (gate scores over the key blocks)
    M  = TopK(S, k)   or   S >= tau                          (block mask)
    O  = softmax(Q K^T / sqrt(d) restricted to M) V

The gate is trained by self-distillation with the base model frozen: the
target is the dense attention map pooled to blocks and normalised per row,
and the loss is ``KL(target || S)`` (:func:`distillation_loss`; the paper
pools with a 2-D max, ``pool="max"``; ``pool="sum"`` takes each block's
attention mass instead). ``attnkit train seer`` runs it on the Shakespeare LM.

Conventions: ``W_q (H, D, d_gate)`` and ``W_k (H, 3 D, d_gate)`` are tensor inputs
(one gate per query head; a GQA group's heads pool their shared kv head's
keys); pooling a last, shorter block uses the tokens it has; causal: key blocks
after the query block are never scored, and the query block's own (diagonal)
block is always kept and counts towards ``k`` (a causal row would otherwise see
no key), as in MoBA; gate scores are computed in float64 and ties go to the
earlier block, so float32 and float64 calls choose the same blocks unless two
scores are within float32 rounding. ``threshold > 0`` keeps every block whose
score reaches it (the diagonal always) instead of the top ``k``. The block mask
is not differentiable: the gate learns from the distillation loss only, and the
attention's gradients reach q, k and v.

Forms: ``reference`` (gate, block mask and element mask materialised) and
``selected_blocks`` (the run-time block selection kernel, one selection per
query block and head): ``O(N k B)`` attention, ``O(N^2 / B^2)`` gate.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..kernels.positions import repeat_kv
from ..kernels.selected_blocks import selected_block_attention
from ..kernels.token_blocks import block_extremes, block_means
from ..masks.selection import BlockSelection, block_selection
from ..params import Param, TensorInput
from ..reference import materialised_attention
from ..registry import SELF_PATTERNS, MechanismSpec, register
from ..validation import check_float, check_int, check_tensor

PAPER = "SeerAttention: Learning Intrinsic Sparse Attention in Your LLMs"


def seer_inputs(q, k, v, generator=None, *, gate_dim: int | None = None) -> dict:
    """Example gate weights ``gate_q (H, D, d_gate)``, ``gate_k (H, 3 D, d_gate)`` for given q, k, v."""
    H, D = q.shape[1], q.shape[3]
    width = gate_dim or D
    wq = torch.randn(H, D, width, generator=generator, dtype=q.dtype) / math.sqrt(D)
    wk = torch.randn(H, 3 * D, width, generator=generator, dtype=q.dtype) / math.sqrt(3 * D)
    return {"gate_q": wq.to(q.device), "gate_k": wk.to(q.device)}


def _check(q, gate_q, gate_k, block_size, top_k, threshold):
    check_int("block_size", block_size)
    check_int("top_k", top_k)
    check_float("threshold", threshold, minimum=0.0)
    H, D = q.shape[1], q.shape[3]
    width = gate_q.shape[2] if isinstance(gate_q, torch.Tensor) and gate_q.ndim == 3 else -1
    check_tensor("gate_q", gate_q, (H, D, width), q, what="(heads, head_dim, gate_dim)")
    check_tensor("gate_k", gate_k, (H, 3 * D, width), q, what="(heads, 3 * head_dim, gate_dim)")


def _pool(x: torch.Tensor, block: int, how: str, dtype: torch.dtype | None) -> torch.Tensor:
    """``x (B, H, N, D)`` pooled over blocks of ``block`` tokens (a last, shorter block pools what it has), in
    ``dtype`` (default ``x``'s), read in place: never a padded or converted copy of ``x``."""
    if how == "avg":
        return block_means(x, block, dtype)
    out = block_extremes(x, block, how)
    return out if dtype is None else out.to(dtype)  # max and min are exact in any dtype


def gate_logits(q, k, gate_q, gate_k, *, block_size: int, causal: bool, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``Q~ K~^T / sqrt(d_gate)`` over (query block, key block), ``(B, H, Rq, Rk)``; future blocks ``-inf`` when causal.

    The pooling runs in ``dtype`` (default q's and k's), on the kv heads (a GQA group's heads share them)."""
    H = q.shape[1]
    pooled_k = repeat_kv(torch.cat([_pool(k, block_size, how, dtype) for how in ("max", "min", "avg")], dim=-1), H)
    qt = _pool(q, block_size, "avg", dtype) @ gate_q  # (B, H, Rq, d_gate) by head
    kt = pooled_k @ gate_k
    logits = qt @ kt.transpose(-1, -2) / math.sqrt(gate_q.shape[-1])
    if causal:
        r = torch.arange(logits.shape[2], device=q.device)
        logits = logits.masked_fill(r[None, :] > r[:, None], float("-inf"))
    return logits


def block_mask(q, k, gate_q, gate_k, block_size, top_k, threshold, causal) -> torch.Tensor:
    """The kept (query block, key block) pairs ``(B, H, R, R)``, bool, from the gate in float64."""
    logits = gate_logits(q.detach(), k.detach(), gate_q.detach().double(), gate_k.detach().double(),
                         block_size=block_size, causal=causal, dtype=torch.float64)
    R = logits.shape[2]
    diagonal = torch.eye(R, dtype=torch.bool, device=q.device)
    visible = logits > float("-inf")
    if threshold > 0:
        return visible & ((logits.softmax(-1) >= threshold) | diagonal)
    rank = logits.masked_fill(diagonal, float("inf")).sort(dim=-1, descending=True, stable=True).indices.argsort(-1)
    return visible & (rank < top_k)


def seer_selection(q, k, *, gate_q, gate_k, block_size: int = 64, top_k: int = 8, threshold: float = 0.0,
                   causal: bool = True) -> BlockSelection:
    """The blocks the gate keeps, as a :class:`~attnkit.masks.selection.BlockSelection` (one row per query block and head)."""
    kept = block_mask(q, k, gate_q, gate_k, block_size, top_k, threshold, causal)
    B, H, R, Rk = kept.shape
    count = min(Rk, top_k) if threshold == 0 else Rk
    order = kept.to(torch.int8).sort(dim=-1, descending=True, stable=True).indices[..., :count]
    return block_selection(order, kept.gather(3, order), block_q=block_size, block_k=block_size,
                           q_len=q.shape[2], kv_len=k.shape[2])


def _reference(q, k, v, *, causal, mask, scale, block_size, top_k, threshold, gate_q, gate_k):
    _check(q, gate_q, gate_k, block_size, top_k, threshold)
    N = q.shape[2]
    kept = block_mask(q, k, gate_q, gate_k, block_size, top_k, threshold, causal)
    blocks = torch.arange(N, device=q.device) // block_size
    allowed = kept[:, :, blocks][..., blocks]
    if causal:
        allowed = allowed & torch.ones(N, N, dtype=torch.bool, device=q.device).tril()
    return materialised_attention(q, k, v, causal=False, mask=allowed, scale=scale)


def _fast(q, k, v, *, causal, mask, scale, block_size, top_k, threshold, gate_q, gate_k):
    _check(q, gate_q, gate_k, block_size, top_k, threshold)
    sel = seer_selection(q, k, gate_q=gate_q, gate_k=gate_k, block_size=block_size, top_k=top_k,
                         threshold=threshold, causal=causal)
    return selected_block_attention(q, k, v, sel, scale=scale, causal=causal)


def distillation_target(q, k, *, block_size: int, causal: bool = True, pool: str = "max", scale=None,
                        chunk: int = 1024) -> torch.Tensor:
    """The dense attention map pooled to ``(B, H, Rq, Rk)`` blocks and normalised per row (no gradient).

    ``pool="max"`` is the paper's 2-D max pooling; ``"sum"`` is each block's attention mass (averaged over the
    block's queries). Computed in query chunks of whole blocks, so memory is ``O(chunk N)``.
    """
    if pool not in ("max", "sum"):
        raise ValueError(f"pool must be 'max' or 'sum', got {pool!r}")
    with torch.no_grad():
        B, H, N, D = q.shape
        scale = D**-0.5 if scale is None else scale
        keys = repeat_kv(k, H)
        Rk = -(-N // block_size)
        step = max(1, chunk // block_size) * block_size
        rows = []
        for c0 in range(0, N, step):
            scores = (q[:, :, c0 : c0 + step] @ keys.transpose(-1, -2)) * scale
            if causal:
                qpos = torch.arange(c0, min(c0 + step, N), device=q.device)
                scores = scores.masked_fill(torch.arange(N, device=q.device) > qpos[:, None], float("-inf"))
            p = F.pad(scores.softmax(-1), (0, Rk * block_size - N))  # (B, H, n, Rk * block)
            n = p.shape[2]
            pad_q = -(-n // block_size) * block_size - n
            filled = F.pad(p, (0, 0, 0, pad_q), value=float("nan"))
            tiles = filled.reshape(B, H, -1, block_size, Rk, block_size)
            if pool == "max":
                rows.append(tiles.nan_to_num(float("-inf")).amax(dim=(3, 5)))
            else:
                rows.append(tiles.nansum(dim=5).nanmean(dim=3))
        target = torch.cat(rows, dim=2)
        return target / target.sum(-1, keepdim=True)


def distillation_loss(q, k, gate_q, gate_k, *, block_size: int, causal: bool = True, pool: str = "max",
                      scale=None) -> torch.Tensor:
    """``KL(target || softmax(gate))`` averaged over (batch, head, query block): the gate's training loss.

    Gradients reach ``gate_q`` and ``gate_k`` only (q and k are the frozen model's)."""
    target = distillation_target(q, k, block_size=block_size, causal=causal, pool=pool, scale=scale)
    logits = gate_logits(q.detach(), k.detach(), gate_q, gate_k, block_size=block_size, causal=causal)
    log_s = logits.log_softmax(-1)
    kl = torch.where(target > 0, target * (target.clamp(min=1e-30).log() - log_s), torch.zeros_like(target))
    return kl.sum(-1).mean()


def _flops(batch, heads, q_len, kv_len, head_dim, causal, block_size=64, top_k=8, **_):
    r = -(-q_len // block_size)
    blocks = sum(min(i + 1, top_k) for i in range(r)) if causal else r * min(r, top_k)
    return 4 * batch * heads * head_dim * blocks * block_size * block_size + 2 * batch * heads * r * r * head_dim


register(MechanismSpec(
    name="seer_attention",
    family="content-sparse",
    papers=(PAPER,),
    patterns=SELF_PATTERNS,
    reference=_reference,
    fast={"selected_blocks": _fast},
    params={"block_size": Param(64, int, "tokens per query and key block", low=1),
            "top_k": Param(8, int, "key blocks per query block, its diagonal block included", low=1),
            "threshold": Param(0.0, float, "if > 0: keep the blocks whose gate score reaches it instead of top_k",
                               low=0.0)},
    test_params={"block_size": 8, "top_k": 3},
    inputs={"gate_q": TensorInput("(H, D, d_gate)", "AttnGate's map of the average-pooled queries"),
            "gate_k": TensorInput("(H, 3 D, d_gate)", "AttnGate's map of the max-, min- and average-pooled keys")},
    tensor_inputs=seer_inputs,
    supports_mask=False,
    flops=_flops,
    complexity="O(N top_k block_size + N^2 / block_size^2)",
    summary="a learned gate on block-pooled q and k keeps each query block's top-k key blocks (self-distilled)",
))
