"""PaTH attention: softmax attention whose positions are accumulated data-dependent Householder transforms.

Yang et al., "PaTH Attention: Position Encoding via Accumulating Householder Transformations"
(2025). Each token ``t`` brings a Householder-like matrix ``H_t = I - beta_t w_t w_t^T`` (``w_t``
a unit vector, ``beta_t`` in ``(0, 2)``, both computed from the token), and the score of query
``i`` for key ``j <= i`` is the bilinear form through every transform in between::

    s_ij = scale * q_i^T H_i H_{i-1} ... H_{j+1} k_j  (+ G_i - G_j)
    o_i  = sum_{j <= i} softmax_j(s_ij) v_j

RoPE is the data-independent special case of products of orthogonal transforms; here the
transform between two positions depends on the tokens between them. The optional forget gate
of PaTH-FoX adds ``G_i - G_j = g_{j+1} + ... + g_i`` (``g <= 0`` per head and token, the
Forgetting Transformer's decay) to the scores.

Tensor inputs, per query head and token: ``w`` ``(B, H, N, Dk)`` (unit vectors; not normalised
here), ``beta`` ``(B, H, N)`` and optionally ``g`` ``(B, H, N)``; ``attnkit.nn.inputs.path.PaTHInputs``
computes them. Causal only; no mask (the transforms follow the causal order).

Forms: ``parallel`` (the reference: token by token, every earlier key is multiplied by the new
``H_t``, then the softmax row; this is also the decoding rule), ``chunked`` (per chunk of
``chunk_size`` tokens a UT transform gives the chunk's scores, its product of transforms and its
keys carried to the chunk's end in matmuls, :mod:`attnkit.families.path.chunked`), ``recurrent``
(the parallel rule, one token at a time from a state). The state is the KV cache with every key
already carried through the transforms seen so far, ``K`` and ``V`` ``(B, H, P, D)``, and the
gate sums ``decay`` ``(B, H, P)``: a decoding step multiplies the cached keys by ``H_t``,
O(P D), and then attends as softmax does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...builders.stateful import CAUSAL_ONLY, register_stateful_mechanism
from ...kernels.positions import repeat_kv
from ...params import Param, TensorInput
from ...state import RecurrentState, expect_state
from ...validation import check_int, check_tensor
from .chunked import path_chunked

PAPER = "PaTH Attention: Position Encoding via Accumulating Householder Transformations"
NAMES = ("K", "V", "decay")


def path_parallel(q, k, v, w, beta, g, K, V, decay, *, scale, chunk_size=None):
    """Reference, straight from the equations: for each token ``t`` in order, every cached key
    becomes ``H_t k``, the gate sums grow by ``g_t``, ``k_t`` joins untransformed, and query ``t``
    attends over the cache with a softmax. Returns ``(out, K, V, decay)``."""
    outs = []
    for t in range(q.shape[2]):
        w_t = w[:, :, t, None, :]  # (B, H, 1, D)
        K = K - beta[:, :, t, None, None] * (K * w_t).sum(-1, keepdim=True) * w_t
        decay = decay + (0 if g is None else g[:, :, t, None])
        K = torch.cat([K, k[:, :, t, None]], dim=2)
        V = torch.cat([V, v[:, :, t, None]], dim=2)
        decay = F.pad(decay, (0, 1))
        scores = scale * (K @ q[:, :, t, :, None]).squeeze(-1) + decay
        outs.append((scores.softmax(dim=-1)[:, :, None] @ V).squeeze(2))
    return torch.stack(outs, dim=2), K, V, decay


def path_scores(q, k, w, beta, g, *, scale):
    """The score matrix ``s_ij`` (``-inf`` above the diagonal), from the reference's rule."""
    B, H, N, D = q.shape
    K, rows = q.new_zeros(B, H, 0, D), []
    decay = q.new_zeros(B, H, 0)
    for t in range(N):
        w_t = w[:, :, t, None, :]
        K = torch.cat([K - beta[:, :, t, None, None] * (K * w_t).sum(-1, keepdim=True) * w_t, k[:, :, t, None]], dim=2)
        decay = F.pad(decay + (0 if g is None else g[:, :, t, None]), (0, 1))
        rows.append(F.pad(scale * (K @ q[:, :, t, :, None]).squeeze(-1) + decay, (0, N - t - 1), value=float("-inf")))
    return torch.stack(rows, dim=2)


KERNELS = {"parallel": path_parallel, "chunked": path_chunked, "recurrent": path_parallel}


def check_inputs(q, w, beta, g, chunk_size):
    B, H, N, D = q.shape
    check_int("chunk_size", chunk_size)
    check_tensor("w", w, (B, H, N, D), q, what="(batch, heads, seq, head_dim) unit Householder directions")
    check_tensor("beta", beta, (B, H, N), q, what="(batch, heads, seq) Householder strengths in (0, 2)")
    if g is not None:
        check_tensor("g", g, (B, H, N), q, what="(batch, heads, seq) log forget gates <= 0")


def _make(kind):
    kernel = KERNELS[kind]

    def form(q, k, v, *, causal, scale, initial_state=None, w=None, beta=None, g=None, chunk_size=64):
        if not causal:
            raise ValueError("PaTH attention is causal (the transforms follow the token order); pass causal=True")
        check_inputs(q, w, beta, g, chunk_size)
        B, H, N, D = q.shape
        Dv = v.shape[-1]
        P = 0 if initial_state is None else initial_state.length
        shapes = {"K": (B, H, P, D), "V": (B, H, P, Dv), "decay": (B, H, P)}
        state = expect_state(initial_state, NAMES, shapes, q)
        if state is None:
            K, V, decay = q.new_zeros(B, H, 0, D), q.new_zeros(B, H, 0, Dv), q.new_zeros(B, H, 0)
        else:
            K, V, decay = (state[n] for n in NAMES)
        out, K, V, decay = kernel(q, repeat_kv(k, H), repeat_kv(v, H), w, beta, g, K, V, decay,
                                  scale=scale, chunk_size=chunk_size)
        return out, RecurrentState(P + N, K=K, V=V, decay=decay)

    form.__name__ = kind
    return form


def _weights(q, k, v, *, causal, mask, scale, w=None, beta=None, g=None, chunk_size=64):
    if not causal:
        raise ValueError("PaTH attention is causal (the transforms follow the token order); pass causal=True")
    check_inputs(q, w, beta, g, chunk_size)
    return path_scores(q, repeat_kv(k, q.shape[1]), w, beta, g, scale=scale).softmax(dim=-1)


def _inputs(q, k, v, generator):
    B, H, N, D = q.shape
    f64 = torch.float64
    w = F.normalize(torch.randn(B, H, N, D, generator=generator, dtype=f64), dim=-1)
    beta = 2 * torch.sigmoid(torch.randn(B, H, N, generator=generator, dtype=f64))
    g = 0.5 * F.logsigmoid(torch.randn(B, H, N, generator=generator, dtype=f64) + 2)
    return {"w": w.to(q.dtype), "beta": beta.to(q.dtype), "g": g.to(q.dtype)}


register_stateful_mechanism(
    "path",
    forms={kind: _make(kind) for kind in KERNELS},
    family="softmax",
    papers=(PAPER,),
    patterns=CAUSAL_ONLY,
    params={"chunk_size": Param(64, int, "tokens per chunk of the chunked form", low=1)},
    tensor_inputs=_inputs,
    inputs={"w": TensorInput("(B, H, N, Dk)", "unit directions w_t of the Householder transforms H_t = I - beta_t w_t w_t^T"),
            "beta": TensorInput("(B, H, N)", "strengths beta_t in (0, 2) of the transforms"),
            "g": TensorInput("(B, H, N)", "optional log forget gates <= 0 (PaTH-FoX)", required=False)},
    tensor_inputs_per_token=("w", "beta", "g"),
    state_size=lambda batch, heads, kv_heads, seq_len, head_dim, v_dim=None, **_: (
        batch * heads * seq_len * (head_dim + (v_dim or head_dim) + 1)),
    complexity="O(N^2 D)",
    summary="PaTH: softmax of q_i^T H_i ... H_{j+1} k_j with data-dependent Householder H_t; chunked UT form",
    test_params={"chunk_size": 16},
    weights=_weights,
)
