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
and O(N) memory (:mod:`attnkit.kernels.right_to_left`, shared with TRA).
"""
from __future__ import annotations

import torch

from ..kernels.positions import query_positions, repeat_kv
from ..kernels.right_to_left import right_to_left_attention
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
    return right_to_left_attention(q, k, v, pos_emb, rule=_COPE, mask=mask, scale=scale, q_chunk=q_chunk,
                                   kv_chunk=kv_chunk)


class _CopeRule:
    """CoPE's tiles (:class:`attnkit.kernels.right_to_left.SuffixRule`): every visible key counts with gate
    ``sigmoid(s)``; the logits add ``q . e`` at the interpolated position, read from ``q . e`` for integer
    positions computed once per query block."""

    def block(self, q, pos_emb):
        return q @ pos_emb.T  # (B, H, cq, npos)

    def gates(self, s, visible, int_logits, ks, ke):
        return torch.sigmoid(s).masked_fill(~visible, 0.0), visible

    def logits(self, s, pos, int_logits):
        return s + interpolated_position_logits(pos.clamp(max=int_logits.shape[-1] - 1), int_logits)


_COPE = _CopeRule()
