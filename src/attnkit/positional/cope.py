"""Contextual Position Encoding (CoPE).

Golovneva et al., "Contextual Position Encoding: Learning to Count What's
Important" (2024). Positions are counted by the context instead of by tokens:

    g_ij = sigmoid(s_ij)                      gate: does key j count for query i?
    p_ij = sum_{t = j .. i} g_it              position of key j seen from query i
    z_ij = (1 - f) q_i . e[floor p] + f q_i . e[ceil p],  f = p - floor p
    out_i = softmax_j(s_ij + z_ij) v_j

with ``s = q k^T * scale`` (masked pairs have gate 0), ``p`` clamped to
``npos - 1`` and a learned table ``e`` of ``npos`` position embeddings
(``q_i . e[p]`` is computed once for integer p, then interpolated, as in the
paper). Causal by construction: ``p_ij`` sums gates up to the query.

Two forms: :func:`cope_reference` on the whole matrix, and
:func:`cope_chunked`, which visits key chunks from the last to the first while
carrying each query's sum of gates to the right, with an online softmax: exact
and O(N) memory. Its query loop is chunked attention's
(:func:`attnkit.kernels.chunked.over_query_chunks`: each query chunk is
recomputed in the backward pass).
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from ..kernels.chunked import over_query_chunks
from ..kernels.positions import query_positions, repeat_kv
from ..scores.normalisers import SOFTMAX
from ..scores.user_mask import apply_mask


def interpolated_position_logits(pos: torch.Tensor, int_logits: torch.Tensor) -> torch.Tensor:
    """``z = (1 - f) L[floor p] + f L[ceil p]`` with ``L = q . e`` for integer positions."""
    unknown = pos.isnan()  # a NaN in q or k: its positions are NaN, and so are their logits (never an index)
    lo, hi = pos.floor().masked_fill(unknown, 0), pos.ceil().masked_fill(unknown, 0)
    frac = pos - lo
    z_lo = int_logits.gather(-1, lo.long())
    z_hi = int_logits.gather(-1, hi.long())
    return (z_hi * frac + z_lo * (1 - frac)).masked_fill(unknown, float("nan"))


def _scores_and_allowed(s, q_pos, k_pos, mask):
    """Add an additive mask; return scores and the boolean of attended pairs (causal)."""
    return apply_mask(s, (k_pos[None, :] <= q_pos[:, None]).expand_as(s), mask)


def cope_reference(q, k, v, *, mask, scale, pos_emb):
    return cope_weights(q, k, mask=mask, scale=scale, pos_emb=pos_emb) @ repeat_kv(v, q.shape[1])


def cope_weights(q, k, *, mask, scale, pos_emb):
    """The softmax weights ``(B, H, Nq, Nk)`` over the contextual-position logits ``s + z``."""
    H, Nq, Nk = q.shape[1], q.shape[2], k.shape[2]
    q_pos, k_pos = query_positions(Nq, Nk, q.device), torch.arange(Nk, device=q.device)
    s = (q @ repeat_kv(k, H).transpose(-1, -2)) * scale
    s, allowed = _scores_and_allowed(s, q_pos, k_pos, mask)
    gates = torch.sigmoid(s).masked_fill(~allowed, 0.0)
    pos = gates.flip(-1).cumsum(-1).flip(-1).clamp(max=pos_emb.shape[0] - 1)
    z = interpolated_position_logits(pos, q @ pos_emb.T)
    return SOFTMAX.weights(s + z, allowed)


def cope_chunked(q, k, v, *, mask, scale, pos_emb, q_chunk: int, kv_chunk: int):
    return over_query_chunks(_CopeQueryChunk(scale, kv_chunk), q, k, v, pos_emb, causal=True, mask=mask,
                             q_chunk=q_chunk)


class _CopeQueryChunk:
    """One block of queries against its visible keys, key chunks visited right to left.

    State carried between key chunks: (acc, denom, running max) of the online
    softmax and the sum of the gates of the keys already visited (to the right).
    Each tile is checkpointed, so the backward pass holds one tile at a time.
    """

    def __init__(self, scale, kv_chunk):
        self.scale, self.kv_chunk = scale, kv_chunk

    def __call__(self, q, k, v, pos_emb, q_pos, k_end, mask):
        B, H, cq, _ = q.shape
        zeros = q.new_zeros(B, H, cq, 1)
        state = (zeros.expand(B, H, cq, v.shape[-1]).clone(), zeros, torch.full_like(zeros, float("-inf")), zeros)
        int_logits = q @ pos_emb.T  # (B, H, cq, npos): q . e[p] for integer p
        for ks in reversed(range(0, k_end, self.kv_chunk)):
            ke = min(ks + self.kv_chunk, k_end)
            tile = (q, k[:, :, ks:ke], v[:, :, ks:ke], int_logits, q_pos, ks, mask[..., ks:ke] if mask is not None else None)
            if torch.is_grad_enabled():
                state = checkpoint(self._tile, *tile, *state, use_reentrant=False)
            else:
                state = self._tile(*tile, *state)
        acc, denom = state[0], state[1]
        alive = denom > 0
        return torch.where(alive, acc / torch.where(alive, denom, torch.ones_like(denom)), torch.zeros_like(acc))

    def _tile(self, q, k, v, int_logits, q_pos, ks, mask, acc, denom, run_max, gates_right):
        B, H, cq, D = q.shape
        Hkv, ck = k.shape[1], k.shape[2]
        G = H // Hkv
        k_pos = torch.arange(ks, ks + ck, device=q.device)
        s = (q.reshape(B, Hkv, G, cq, D) @ k[:, :, None].transpose(-1, -2)).reshape(B, H, cq, ck) * self.scale
        s, allowed = _scores_and_allowed(s, q_pos, k_pos, mask)
        gates = torch.sigmoid(s).masked_fill(~allowed, 0.0)
        pos = gates.flip(-1).cumsum(-1).flip(-1) + gates_right
        t = s + interpolated_position_logits(pos.clamp(max=int_logits.shape[-1] - 1), int_logits)
        t = t.masked_fill(~allowed, float("-inf"))
        new_max = torch.maximum(run_max, t.amax(dim=-1, keepdim=True)).detach()
        safe_max = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        p = torch.exp(t - safe_max)
        rescale = torch.exp(run_max - safe_max)
        pv = (p.reshape(B, Hkv, G, cq, ck) @ v[:, :, None]).reshape(B, H, cq, v.shape[-1])
        gates_right = gates_right + gates.sum(dim=-1, keepdim=True)
        return acc * rescale + pv, denom * rescale + p.sum(dim=-1, keepdim=True), new_max, gates_right
