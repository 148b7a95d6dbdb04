"""Neural Attention: a feed-forward network of each (query, key) pair computes its score.

DiGiugno & Mahmood, "Neural Attention: A Novel Mechanism for Enhanced Expressive Power in
Transformer Models" (2025). The dot product ``q_i . k_j`` is replaced by a small MLP of the
concatenation ``[q_i; k_j]``, which keeps the ``(Nq, Nk)`` shape of the score matrix::

    h1_ij = relu(W_1 [q_i; k_j] + b_1)             (A hidden units)
    h2_ij = relu(W_2 h1_ij + b_2)                   (A2 hidden units)
    e_ij  = w_3 . h2_ij                             (the score; a bias b_3 cancels in the softmax)
    out_i = sum_j softmax_j(e_ij) v_j

per head, as the authors' code builds it (two ReLU hidden layers, ``A2 = A / 2``). The paper's
cost mitigation projects q and k down to ``d'`` dimensions before the MLP; a linear map followed
by ``W_1`` is one linear map, so it is folded into ``W_1``'s halves here: tensor inputs ``w_q``
and ``w_k`` ``(heads, head_dim, A)`` (``W_1 [q; k] = q w_q + k w_k``), ``b_1`` ``(heads, A)``,
``w_2`` ``(heads, A, A2)``, ``b_2`` ``(heads, A2)``, ``w_3`` ``(heads, A2)``. The score has no
temperature: ``scale`` is not used. Additive attention (``"additive"``) is the one-hidden-layer,
``tanh`` member of this family.

Forms: ``reference`` (the concatenation materialised for every pair) and ``chunked`` (q and k
projected once, the MLP evaluated one tile of pairs at a time: a tile holds ``q_chunk x kv_chunk
x A`` numbers; the first layer is shared with additive attention,
:mod:`attnkit.builders.pair_scores`); incremental over a KV cache.
"""
from __future__ import annotations

import torch

from ..builders.pair_scores import check_first_layer, concatenated_first_layer, tiled_first_layer
from ..builders.score_pipeline import register_score_mechanism
from ..params import Param, TensorInput
from ..validation import check_tensor

PAPER = "Neural Attention: A Novel Mechanism for Enhanced Expressive Power in Transformer Models"


def _check(q, k, w_q, w_k, b_1, w_2, b_2, w_3):
    check_first_layer(q, k, w_q, w_k, "a hidden width")
    if not isinstance(w_2, torch.Tensor) or w_2.ndim != 3:
        raise ValueError("w_2 must be a tensor of shape (heads, A, A2) for a second hidden width A2")
    H, A, A2 = q.shape[1], w_q.shape[2], w_2.shape[2]
    check_tensor("b_1", b_1, (H, A), q, what="(heads, A)")
    check_tensor("w_2", w_2, (H, A, A2), q, what="(heads, A, A2)")
    check_tensor("b_2", b_2, (H, A2), q, what="(heads, A2)")
    check_tensor("w_3", w_3, (H, A2), q, what="(heads, A2)")


def _head_mlp(h1_pre, b_1, w_2, b_2, w_3):
    """``w_3 . relu(relu(h1_pre + b_1) w_2 + b_2)`` for pre-activations ``(B, H, i, j, A)``."""
    h1 = torch.relu(h1_pre + b_1[:, None, None, :])
    h2 = torch.relu(torch.einsum("bhija,hac->bhijc", h1, w_2) + b_2[:, None, None, :])
    return torch.einsum("bhijc,hc->bhij", h2, w_3)


def _tiled_mod(q, k, *, w_q, w_k, b_1, w_2, b_2, w_3, **_):
    _check(q, k, w_q, w_k, b_1, w_2, b_2, w_3)
    first = tiled_first_layer(q, k, w_q, w_k)

    def mod(scores, q_pos, k_pos):
        return _head_mlp(first(q_pos, k_pos), b_1, w_2, b_2, w_3)

    return mod


def _reference_mod(q, k, *, w_q, w_k, b_1, w_2, b_2, w_3, **_):
    """The MLP on the materialised concatenation ``[q_i; k_j]`` of every pair, as the paper writes it."""
    _check(q, k, w_q, w_k, b_1, w_2, b_2, w_3)

    def mod(scores, q_pos, k_pos):
        return _head_mlp(concatenated_first_layer(q, k, w_q, w_k), b_1, w_2, b_2, w_3)

    return mod


def neural_attention_examples(q, k, v, g, hidden: int = 16):
    """Example tensor inputs: hidden widths ``A = hidden``, ``A2 = hidden / 2``, scaled to unit-size activations."""
    H, D, A, A2 = q.shape[1], q.shape[3], hidden, hidden // 2
    def rand(*shape, fan_in):
        return torch.randn(*shape, generator=g, dtype=q.dtype).to(q.device) * fan_in ** -0.5
    return {"w_q": rand(H, D, A, fan_in=D), "w_k": rand(H, k.shape[3], A, fan_in=k.shape[3]),
            "b_1": rand(H, A, fan_in=1), "w_2": rand(H, A, A2, fan_in=A), "b_2": rand(H, A2, fan_in=1),
            "w_3": rand(H, A2, fan_in=1)}


register_score_mechanism(
    "neural_attention",
    papers=(PAPER,),
    make_mod=_tiled_mod,
    make_reference_mod=_reference_mod,
    inputs={"w_q": TensorInput("(H, Dk, A)", "the query half of the first layer W_1 (with the down-projection folded in)"),
            "w_k": TensorInput("(H, Dk, A)", "the key half of the first layer W_1"),
            "b_1": TensorInput("(H, A)", "first hidden layer's bias"),
            "w_2": TensorInput("(H, A, A2)", "second hidden layer's weights"),
            "b_2": TensorInput("(H, A2)", "second hidden layer's bias"),
            "w_3": TensorInput("(H, A2)", "the output layer: one score per pair")},
    params={
        "q_chunk": Param(64, int, "queries per tile of the chunked form", low=1),
        "kv_chunk": Param(128, int, "keys per tile of the chunked form", low=1),
    },
    tensor_inputs=neural_attention_examples,
    summary="score = w_3 . relu(W_2 relu(W_1 [q; k] + b_1) + b_2): an MLP of each (query, key) pair, softmax; "
            "scale unused",
)
