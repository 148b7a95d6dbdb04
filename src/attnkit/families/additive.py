"""Additive (concat) attention: Bahdanau, Cho & Bengio's score, also Luong's "concat".

Bahdanau et al., "Neural Machine Translation by Jointly Learning to Align and
Translate" (2015), section 3.1 and appendix A.1.2: the alignment model is a
one-hidden-layer perceptron of the decoder state ``s_{i-1}`` and the annotation
``h_j``,

    e_ij = v_a^T tanh(W_a s_{i-1} + U_a h_j),   a_ij = exp(e_ij) / sum_k exp(e_ik),
    c_i  = sum_j a_ij h_j.

Luong et al., "Effective Approaches to Attention-based Neural Machine
Translation" (2015), eq. 8, call the same score *concat*,
``v_a^T tanh(W_a [h_t; h_s])``: splitting ``W_a = [W; U]`` gives the sum above.
Pointer Networks' ``u_j = v^T tanh(W_1 e_j + W_2 d_i)`` and Show, Attend and
Tell's ``f_att`` are this score too.

Here the query ``q_i`` plays ``s_{i-1}`` and the key ``k_j`` plays ``h_j``,
per head: tensor inputs ``w_q`` and ``w_k`` ``(heads, head_dim, A)`` (``W_a``
and ``U_a`` acting on the right, ``q_i @ w_q``) and ``v_a`` ``(heads, A)`` for
an alignment width ``A``. The score has no temperature, so ``scale`` is not
used. The reference materialises the concatenation ``[q_i; k_j]`` for every
pair and multiplies it by ``W_a``; the chunked form (the first layer shared
with Neural Attention, :mod:`attnkit.builders.pair_scores`) projects queries and keys
once and forms ``tanh(q_i W + k_j U)`` one tile at a time, so a tile holds
``q_chunk x kv_chunk x A`` numbers (hence the smaller default tiles); the
``dense`` form (the default while all pairs times ``A`` stay under ``2^22``
numbers, e.g. a decoder step) forms them all at once.
"""
from __future__ import annotations

import torch

from ..builders.pair_scores import check_first_layer, concatenated_first_layer, project, tiled_first_layer
from ..builders.score_pipeline import register_score_mechanism
from ..params import Param, TensorInput
from ..reference import materialised_attention
from ..validation import check_tensor

BAHDANAU = "Neural Machine Translation by Jointly Learning to Align and Translate"
LUONG = "Effective Approaches to Attention-based Neural Machine Translation"


def additive_scores(q: torch.Tensor, k: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor,
                    v_a: torch.Tensor) -> torch.Tensor:
    """``e[..., i, j] = v_a . tanh(q_i @ w_q + k_j @ w_k)`` for ``q (..., Nq, Dq)``, ``k (..., Nk, Dk)``,
    ``w_q (..., Dq, A)``, ``w_k (..., Dk, A)``, ``v_a (..., A)`` (leading dimensions broadcast)."""
    hidden = torch.tanh((q @ w_q).unsqueeze(-2) + (k @ w_k).unsqueeze(-3))  # (..., Nq, Nk, A)
    return (hidden @ v_a.unsqueeze(-1)).squeeze(-1)


def _check(q, k, w_q, w_k, v_a):
    check_first_layer(q, k, w_q, w_k, "an alignment width")
    check_tensor("v_a", v_a, (q.shape[1], w_q.shape[2]), q, what="(heads, A)")


def _tiled_mod(q, k, *, w_q, w_k, v_a, **_):
    _check(q, k, w_q, w_k, v_a)
    first = tiled_first_layer(q, k, w_q, w_k)
    v_col = v_a[:, None, :, None]

    def mod(scores, q_pos, k_pos):
        return (torch.tanh(first(q_pos, k_pos)) @ v_col).squeeze(-1)

    return mod


def _reference_mod(q, k, *, w_q, w_k, v_a, **_):
    """``v_a^T tanh(W_a [q_i; k_j])`` with the concatenation materialised, as Luong et al. write it."""
    _check(q, k, w_q, w_k, v_a)

    def mod(scores, q_pos, k_pos):
        return torch.einsum("bhija,ha->bhij", torch.tanh(concatenated_first_layer(q, k, w_q, w_k)), v_a)

    return mod


# The dense form holds every (query, key, A) number at once; above this many it is the chunked form's turn.
DENSE_LIMIT = 1 << 22


def _dense(q, k, v, *, causal, mask, scale, w_q, w_k, v_a, q_chunk=None, kv_chunk=None):
    """Projected once, all pairs at once: for short sequences (decoder steps), where tiles only cost."""
    _check(q, k, w_q, w_k, v_a)
    q_proj, k_proj = project(q, k, w_q, w_k)
    scores = torch.tanh(q_proj[:, :, :, None, :] + k_proj[:, :, None, :, :]) @ v_a[:, None, :, None]
    return materialised_attention(q, k, v, causal=causal, mask=mask, scale=scale,
                                  score_mod=lambda s, q_pos, k_pos: scores.squeeze(-1))


def _too_large_for_dense(q, k, v, *, w_q=None, **_) -> str | None:
    width = w_q.shape[-1] if isinstance(w_q, torch.Tensor) else 1
    held = q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * width
    return None if held <= DENSE_LIMIT else f"{held} (query, key, A) numbers > {DENSE_LIMIT}: run in tiles"


def _examples(q, k, v, g):
    H, D, A = q.shape[1], q.shape[3], 24
    return {
        "w_q": torch.randn(H, D, A, generator=g, dtype=q.dtype) * D ** -0.5,
        "w_k": torch.randn(H, k.shape[3], A, generator=g, dtype=q.dtype) * k.shape[3] ** -0.5,
        "v_a": torch.randn(H, A, generator=g, dtype=q.dtype),
    }


register_score_mechanism(
    "additive",
    papers=(BAHDANAU, LUONG),
    make_mod=_tiled_mod,
    make_reference_mod=_reference_mod,
    inputs={"w_q": TensorInput("(H, Dk, A)", "query projection W_a"),
            "w_k": TensorInput("(H, Dk, A)", "key projection U_a"),
            "v_a": TensorInput("(H, A)", "alignment vector v_a")},
    params={
        "q_chunk": Param(64, int, "queries per tile of the chunked form", low=1),
        "kv_chunk": Param(256, int, "keys per tile of the chunked form", low=1),
    },
    tensor_inputs=_examples,
    extra_fast={"dense": _dense},
    default_forms=("dense", "chunked"),
    auto_when={"dense": _too_large_for_dense},
    summary="Bahdanau additive / Luong concat score v_a . tanh(q W + k U), softmax; scale unused",
)
