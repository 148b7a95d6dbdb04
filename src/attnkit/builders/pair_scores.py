"""Scores from a small network of each (query, key) pair: its first layer, on the concatenation ``[q_i; k_j]``.

Additive attention (Bahdanau et al., "Neural Machine Translation by Jointly Learning to Align and
Translate") and Neural Attention (DiGiugno & Mahmood, "Neural Attention: A Novel Mechanism for Enhanced
Expressive Power in Transformer Models") both score a pair by a network whose first layer acts on
``[q_i; k_j]``. Split by halves, ``W [q_i; k_j] = q_i W_q + k_j W_k``: the fast forms project queries and
keys once and add the two per pair; the references materialise the concatenation for every pair, as the
papers write it. Tensor inputs ``w_q`` and ``w_k`` ``(heads, head_dim, A)`` act on the right. What follows
the first layer is the mechanism's.
"""
from __future__ import annotations

import torch

from ..kernels.positions import repeat_kv
from ..validation import check_tensor


def check_first_layer(q, k, w_q, w_k, width: str) -> None:
    """ValueError/TypeError unless ``w_q`` and ``w_k`` are ``(heads, head_dim, A)`` for q and k; ``width`` names
    what ``A`` is (``"an alignment width"``)."""
    if not isinstance(w_q, torch.Tensor) or w_q.ndim != 3:
        raise ValueError(f"w_q must be a tensor of shape (heads, head_dim, A) for {width} A")
    H, D, A = q.shape[1], q.shape[3], w_q.shape[2]
    check_tensor("w_q", w_q, (H, D, A), q, what="(heads, head_dim, A)")
    check_tensor("w_k", w_k, (H, k.shape[3], A), q, what="(heads, head_dim, A)")


def project(q, k, w_q, w_k):
    """``q W_q`` and ``k W_k`` per head, ``(B, H, N, A)`` each: projected once for all pairs."""
    k = repeat_kv(k, q.shape[1])
    return torch.einsum("bhnd,hda->bhna", q, w_q), torch.einsum("bhnd,hda->bhna", k, w_k)


def tiled_first_layer(q, k, w_q, w_k):
    """``first(q_pos, k_pos)``: the first layer ``(B, H, i, j, A)`` of a tile's pairs, from projections made
    once here. Positions are the score pipeline's (bottom-right aligned query positions)."""
    offset = k.shape[2] - q.shape[2]
    q_proj, k_proj = project(q, k, w_q, w_k)

    def first(q_pos, k_pos):
        return q_proj[:, :, q_pos - offset, None, :] + k_proj[:, :, None, k_pos, :]

    return first


def concatenated_first_layer(q, k, w_q, w_k):
    """``W [q_i; k_j]`` ``(B, H, Nq, Nk, A)`` for every pair, the concatenation materialised (the references')."""
    k = repeat_kv(k, q.shape[1])
    Nq, Nk = q.shape[2], k.shape[2]
    pairs = torch.cat([q[:, :, :, None, :].expand(-1, -1, Nq, Nk, -1),
                       k[:, :, None, :, :].expand(-1, -1, Nq, Nk, -1)], dim=-1)
    return torch.einsum("bhijc,hca->bhija", pairs, torch.cat([w_q, w_k], dim=1))
