"""Relative position embeddings that meet both the query and the key (Huang et al., method 4).

Huang, Liang, Xu & Xiang, "Improve Transformer Models with Better Relative Position Embeddings"
(Findings of EMNLP 2020). Shaw et al. add a learned embedding ``a_ij`` of the clipped relative
distance to the key only (``shaw``); method 4 of this paper lets it interact with the query and with
the key:

    e_ij = (q_i . k_j + q_i . a_ij + k_j . a_ij) * scale,      a_ij = E[clip(j - i, -K, K)],

the relative counterpart of an absolute embedding added to both sides (``(q_i + p_i).(k_j + p_j)``
without the position-only term). It is the paper's best method and the one Hugging Face BERT calls
``relative_key_query``. Reading: the paper shares one table across heads; here each head has its
own, shape ``(heads, 2K + 1, head_dim)`` as ``shaw``'s (a shared table is the same table repeated).

The reference gathers ``a_ij`` for every pair (an ``(Nq, Nk, D)`` tensor), as the equation reads.
The chunked form never builds it: per tile it projects the tile's queries and keys on the rows of
the table the tile's distances reach (``Nq x R`` and ``Nk x R`` numbers) and picks each pair's entry.
"""
from __future__ import annotations

import torch

from ..builders.score_pipeline import register_score_mechanism
from ..kernels.positions import repeat_kv
from ..params import TensorInput
from ..scores.relative import relative_indices
from ..validation import check_tensor

PAPER = "Improve Transformer Models with Better Relative Position Embeddings"


def _check(q, k, table):
    if not isinstance(table, torch.Tensor) or table.ndim != 3 or table.shape[1] % 2 == 0:
        raise ValueError("table must be a tensor of shape (heads, 2K + 1, head_dim) for clip distance K")
    check_tensor("table", table, (q.shape[1], table.shape[1], q.shape[3]), q)


def _rows(t, pos, offset, heads):
    """The rows of ``t`` at absolute positions ``pos`` (``offset`` before its first row), one per query head."""
    return repeat_kv(t[:, :, int(pos[0]) - offset: int(pos[-1]) - offset + 1], heads)


def _reference_mod(q, k, *, scale, table, **_):
    _check(q, k, table)
    K, q_off = (table.shape[1] - 1) // 2, k.shape[2] - q.shape[2]

    def mod(scores, q_pos, k_pos):
        a = table[:, relative_indices(q_pos, k_pos, K)].to(q.dtype)  # (H, Nq, Nk, D): a_ij for every pair
        qa = torch.einsum("bhqd,hqkd->bhqk", _rows(q, q_pos, q_off, q.shape[1]), a)
        ka = torch.einsum("bhkd,hqkd->bhqk", _rows(k, k_pos, 0, q.shape[1]), a)
        return scores + scale * (qa + ka)

    return mod


def _tiled_mod(q, k, *, scale, table, **_):
    _check(q, k, table)
    K, q_off = (table.shape[1] - 1) // 2, k.shape[2] - q.shape[2]

    def mod(scores, q_pos, k_pos):
        idx = relative_indices(q_pos, k_pos, K)  # (Nq, Nk) rows of the table
        lo, hi = int(idx.min()), int(idx.max()) + 1
        rows = table[:, lo:hi].transpose(-1, -2).to(q.dtype)  # (H, D, R): only the distances this tile reaches
        qe = _rows(q, q_pos, q_off, q.shape[1]) @ rows  # (B, H, Nq, R)
        ke = _rows(k, k_pos, 0, q.shape[1]) @ rows  # (B, H, Nk, R)
        local = (idx - lo).expand(*scores.shape[:2], -1, -1)
        qa = qe.gather(-1, local)
        ka = ke.transpose(-1, -2).gather(-2, local)  # ka[i, j] = ke[j, idx[i, j]]
        return scores + scale * (qa + ka)

    return mod


register_score_mechanism(
    "relative_key_query",
    papers=(PAPER,),
    make_mod=_tiled_mod,
    make_reference_mod=_reference_mod,
    inputs={"table": TensorInput("(H, 2K + 1, D)", "learned embeddings of the relative distances clipped to -K..K, per head")},
    tensor_inputs=lambda q, k, v, g: {
        "table": 0.5 * torch.randn(q.shape[1], 2 * 8 + 1, q.shape[3], generator=g, dtype=q.dtype)
    },
    summary="softmax + q_i . a_ij + k_j . a_ij: relative embeddings meeting query and key (Huang et al. method 4; reading: a table per head, the paper shares one)",
)
