"""Relative position representations (Shaw et al.) and Music Transformer's skewing.

Shaw, Uszkoreit & Vaswani, "Self-Attention with Relative Position
Representations" (2018): a learned vector ``a_{clip(j - i, K)}`` per clipped
relative distance joins the key, ``e_ij = q_i . (k_j + a_{j-i}) * scale``.
Huang et al., "Music Transformer" (2018) keep one such table per head and
compute ``S_rel[i, j] = q_i . E[j - i]`` without materialising the
``(L, L, D)`` tensor of gathered embeddings: they multiply ``Q E^T`` (``L x R``
for ``R`` distinct distances) and *skew* it (pad one column, reshape, slice),
which moves entry ``(i, r)`` to ``(i, j)``. Intermediate memory drops from
``O(L^2 D)`` to ``O(L R)``; applied per (query chunk, key chunk) tile, as here,
it is ``O(chunk^2)`` and the whole attention runs in linear memory.

The table has shape ``(heads, 2 K + 1, head_dim)``: row ``r + K`` is distance
``r = key - query`` clipped to ``[-K, K]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def relative_indices(q_pos: torch.Tensor, k_pos: torch.Tensor, max_distance: int) -> torch.Tensor:
    return (k_pos[None, :] - q_pos[:, None]).clamp(-max_distance, max_distance) + max_distance


def skew(qe: torch.Tensor, n_keys: int) -> torch.Tensor:
    """Music Transformer's skew: ``out[..., i, j] = qe[..., i, j + n_q - 1 - i]``.

    ``qe[..., i, c]`` holds query i against distance ``c - (n_q - 1)`` (the
    columns run over distances from ``-(n_q - 1)`` upwards). Padding one column
    and re-reading the flat buffer with row length ``R`` shifts row i left by
    ``n_q - 1 - i`` places; the first ``n_keys`` columns are the answer.
    """
    *lead, n_q, r = qe.shape
    flat = F.pad(qe, (0, 1)).reshape(*lead, n_q * (r + 1))
    return flat[..., n_q - 1 : n_q - 1 + n_q * r].reshape(*lead, n_q, r)[..., :n_keys]


def shaw_skew_mod(q: torch.Tensor, table: torch.Tensor, *, scale: float, offset: int):
    """Score modifier adding ``scale * q_i . E[clip(j - i)]`` with the skewing trick.

    ``q`` is the full query tensor; ``offset`` maps absolute query positions to
    its rows (``kv_len - q_len`` with bottom-right alignment). Works on any
    contiguous tile of queries and keys.
    """
    max_distance = (table.shape[1] - 1) // 2

    def mod(scores, q_pos, k_pos):
        q0, q1 = int(q_pos[0]) - offset, int(q_pos[-1]) - offset + 1
        # Distances covered by this tile, from k_pos[0] - q_pos[-1] upwards.
        distances = torch.arange(int(k_pos[0]) - int(q_pos[-1]), int(k_pos[-1]) - int(q_pos[0]) + 1, device=q.device)
        rows = distances.clamp(-max_distance, max_distance) + max_distance
        qe = q[:, :, q0:q1] @ table[:, rows].transpose(-1, -2).to(q.dtype)  # (B, H, n_q, R)
        return scores + scale * skew(qe, len(k_pos))

    return mod


def shaw_gather_mod(q: torch.Tensor, table: torch.Tensor, *, scale: float, offset: int):
    """The same modifier straight from Shaw et al.'s equation: gather ``a_ij`` for every pair."""
    max_distance = (table.shape[1] - 1) // 2

    def mod(scores, q_pos, k_pos):
        a = table[:, relative_indices(q_pos, k_pos, max_distance)].to(q.dtype)  # (H, Nq, Nk, D)
        rows = q[:, :, int(q_pos[0]) - offset : int(q_pos[-1]) - offset + 1]
        return scores + scale * torch.einsum("bhqd,hqkd->bhqk", rows, a)

    return mod
