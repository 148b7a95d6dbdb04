"""DMA: Dynamic Mask Attention (Shi et al., "Trainable Dynamic Mask Sparse Attention", 2025).

A content-aware mask made from the values, then attention that skips what it masks::

    delta_j = A * softplus(vec(v_j) W_delta)          (one score per key and kv head, from the values)
    M_t     = top-w { delta_j : j <= t }               (the w keys with the largest delta a query can see)
    o_t     = sum_{j in M_t} softmax_j(scale q_t . k_j + delta_j) v_j

``delta`` is both the selection score and an additive bias on the kept scores,
so the learned ``W_delta`` and ``A`` get gradients through the kept scores
although the top-w choice itself is not differentiable (the paper's argument
that the mask does not block gradients). A query attends to ``min(w, t + 1)``
keys: ``O(N w)`` work instead of ``O(N^2)``, with the whole KV cache kept (no
key is ever dropped for good; DMA's decode reads the cache like softmax does).

Conventions where the paper leaves a choice: ``bias (B, Hkv, Nk)`` is
``delta`` given already computed (inside ``attnkit.nn.Attention(...,
mechanism="dma")``, :class:`attnkit.nn.inputs.dma.DMAInputs` computes it as the
authors' code does: ``dt_proj`` over the values of all kv heads concatenated,
then ``A * softplus``; the paper's first version writes ``exp(A * softplus(.))``,
which the authors' code replaced by the product); a kv head's ``delta`` and
mask serve all its query heads; ties between equal ``delta`` go to the *later*
key (so a constant ``delta`` makes DMA a sliding window of ``w`` keys, and the
float32 and float64 calls choose the same keys unless two deltas are within
rounding of each other); the authors' optional block smoothing of the mask is
not part of the mechanism.

Forms: ``reference`` (the mask ranked row by row and materialised) and
``chunked``: queries in chunks of ``C``; the keys a chunk can select are the
previous chunk's last query's ``w`` keys and the chunk's own (a key that has
dropped out of a prefix's top-w never comes back, as each later key only adds
competition), so a chunk ranks and attends over at most ``w + C`` keys:
``O(N (w + C) D)`` time, ``O(C (w + C))`` memory, recomputed in the backward.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from ..builders.key_scores import check_key_scores, key_score_inputs, scored_kv_cache_step
from ..kernels.positions import query_positions, repeat_kv
from ..params import Param, TensorInput
from ..reference import materialised_attention
from ..registry import MechanismSpec, register
from ..state import ScoredKVCache

PAPER = "Trainable Dynamic Mask Sparse Attention"


def _later_first_order(bias):
    """Key indices ordered by ``delta`` descending, equal deltas later key first (the tie rule)."""
    flipped = bias.flip(-1).sort(dim=-1, descending=True, stable=True).indices
    return bias.shape[-1] - 1 - flipped


def dynamic_mask(bias, q_len: int, window: int) -> torch.Tensor:
    """``(B, Hkv, q_len, Nk)``: the keys each query keeps, the top ``window`` of ``bias`` among those it sees."""
    B, Hkv, Nk = bias.shape
    qpos = query_positions(q_len, Nk, bias.device)
    visible = torch.arange(Nk, device=bias.device) <= qpos[:, None]
    rows = bias.detach()[:, :, None, :].masked_fill(~visible, float("-inf"))
    order = _later_first_order(rows)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(Nk, device=bias.device).expand_as(order))
    return visible & (rank < window)


def _reference(q, k, v, *, causal, mask, scale, window, bias):
    check_key_scores("bias", q, k, bias)
    H = q.shape[1]
    kept = repeat_kv(dynamic_mask(bias, q.shape[2], window), H)
    scores_bias = repeat_kv(bias[:, :, None, :], H)
    return materialised_attention(q, k, v, causal=False, mask=torch.where(kept, scores_bias, float("-inf")),
                                  scale=scale)


def _beats(bias_i, pos_i, bias_j, pos_j):
    """Whether key ``i`` ranks above key ``j``: a larger delta, or the same delta and a later position."""
    return (bias_i > bias_j) | ((bias_i == bias_j) & (pos_i > pos_j))


def _chunk_attention(qc, kc, vc, bias_c, kept, scale):
    """Attention of a chunk's queries ``(B, Hkv, g, C, D)`` over its candidate keys ``(B, Hkv, S, D)``."""
    s = (qc @ kc[:, :, None].transpose(-1, -2)) * scale + bias_c[:, :, None, None, :]
    s = s.masked_fill(~kept[:, :, None], float("-inf"))
    return torch.softmax(s, dim=-1) @ vc[:, :, None]


def _chunked(q, k, v, *, causal, mask, scale, window, bias, chunk: int = 256):
    check_key_scores("bias", q, k, bias)
    B, H, Nq, D = q.shape
    Hkv, Nk, Dv = k.shape[1], k.shape[2], v.shape[3]
    g = H // Hkv
    start = Nk - Nq  # the first query's position
    detached = bias.detach()
    held = _later_first_order(detached[..., :start])[..., :window].sort(dim=-1).values  # top-w of the prefix
    outs = []
    for p0 in range(start, Nk, chunk):
        p1 = min(Nk, p0 + chunk)
        new = torch.arange(p0, p1, device=q.device).expand(B, Hkv, p1 - p0)
        cand = torch.cat([held, new], dim=-1)  # (B, Hkv, S) positions, increasing
        cb = detached.gather(2, cand)
        beats = _beats(cb[..., :, None], cand[..., :, None], cb[..., None, :], cand[..., None, :])  # (.., i, j)
        n_held = held.shape[-1]
        count = beats[..., :n_held, :].sum(2, keepdim=True) + beats[..., n_held:, :].cumsum(2)  # (B, Hkv, C, S)
        kept = (count < window) & (cand[..., None, :] <= new[..., :, None])
        held = cand.masked_select(kept[..., -1, :]).view(B, Hkv, -1)
        qc = q[:, :, p0 - start : p1 - start].reshape(B, Hkv, g, p1 - p0, D)
        kc = k.gather(2, cand[..., None].expand(-1, -1, -1, D))
        vc = v.gather(2, cand[..., None].expand(-1, -1, -1, Dv))
        args = (qc, kc, vc, bias.gather(2, cand), kept, scale)
        run = checkpoint(_chunk_attention, *args, use_reentrant=False) if torch.is_grad_enabled() else _chunk_attention(*args)
        outs.append(run.reshape(B, H, p1 - p0, Dv))
    return torch.cat(outs, dim=2) if outs else q.new_zeros(B, H, 0, Dv)


def _flops(batch, heads, q_len, kv_len, head_dim, causal, window=2048, **_):
    pos = torch.arange(kv_len - q_len, kv_len)
    return 4 * batch * heads * head_dim * int((pos + 1).clamp(max=window).sum())


register(MechanismSpec(
    name="dma",
    family="content-sparse",
    papers=(PAPER,),
    patterns=frozenset({"causal-self"}),
    reference=_reference,
    fast={"chunked": _chunked},
    step=scored_kv_cache_step(_chunked, "bias"),
    params={"window": Param(2048, int, "keys each query keeps (w): the largest deltas among the keys it sees", low=1)},
    test_params={"window": 5},
    inputs={"bias": TensorInput("(B, Hkv, N)", "delta: each key's score A * softplus(vec(v) W_delta), the selection "
                                               "score and the bias added to its kept scores")},
    tensor_inputs=key_score_inputs("bias"),
    tensor_inputs_per_token=("bias",),
    supports_mask=False,
    flops=_flops,
    state_size=ScoredKVCache.size,
    complexity="O(N window)",
    summary="each query keeps the top-w keys by a learned score of their values, added as a bias to the kept scores; "
            "reading: delta = A * softplus(vec(v) W_delta) as the authors' code (the paper writes exp of it), "
            "ties to the later key (a constant delta is a sliding window)",
))
