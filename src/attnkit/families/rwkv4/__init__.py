"""RWKV-4's time mixing (WKV), from Peng et al., "RWKV: Reinventing RNNs for the Transformer Era" (2023).

Per channel ``c`` (eq. 14 and 19), with a decay ``w_c >= 0`` and a bonus ``u_c`` for the
current token,

    wkv_t = ( sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t )
          / ( sum_{i<t} e^{-(t-1-i) w + k_i}     + e^{u + k_t} )
    o_t   = sigmoid(r_t) * wkv_t

and in RNN mode ``S_t = e^{-w} S_{t-1} + e^{k_t} v_t`` (likewise ``Z_t``), so a decode
step costs O(D) whatever the context. Here the query plays the receptance ``r``; keys
and values share ``head_dim``; ``scale`` is not used. Tensor inputs ``w`` and ``u``
``(heads, head_dim)``; ``attnkit.nn.inputs.rwkv4.RWKV4Decay`` learns them. The token
shift of the RWKV block (mixing ``x_t`` with ``x_{t-1}`` before the projections) belongs
to the layer, not to this op, and is not part of it. Causal only.

Forms: ``parallel`` (every pair's weight materialised per channel, the reference),
``chunked`` (the same inside chunks, the state carried across), ``recurrent`` (the
paper's RNN mode).
"""
from __future__ import annotations

import torch

from ...builders.stateful import CAUSAL_ONLY, register_stateful_mechanism
from ...kernels.positions import repeat_kv
from ...params import Param, TensorInput
from ...state import RecurrentState, expect_state
from ...validation import check_int, check_tensor
from .forms import wkv_chunked, wkv_parallel, wkv_recurrent

PAPER = "RWKV: Reinventing RNNs for the Transformer Era"
NAMES = ("a", "b", "p")


def _make(kind):
    def form(q, k, v, *, causal, scale, initial_state=None, w=None, u=None, chunk_size=64):
        if not causal:
            raise ValueError("rwkv4 is a causal recurrence; pass causal=True")
        check_int("chunk_size", chunk_size)
        B, H, N, D = q.shape
        if v.shape[-1] != D:
            raise ValueError(f"v has head_dim {v.shape[-1]} but q has {D}; RWKV mixes channel by channel")
        check_tensor("w", w, (H, D), q, what="(heads, head_dim) decays >= 0")
        check_tensor("u", u, (H, D), q, what="(heads, head_dim) bonuses")
        state = expect_state(initial_state, NAMES, {n: (B, H, D) for n in NAMES}, q)
        if state is None:
            a, b, p = q.new_zeros(B, H, D), q.new_zeros(B, H, D), q.new_full((B, H, D), float("-inf"))
        else:
            a, b, p = (state[n] for n in NAMES)
        k, v = repeat_kv(k, H), repeat_kv(v, H)
        if kind == "parallel":
            out, final = wkv_parallel(q, k, v, w, u, a, b, p)
        elif kind == "chunked":
            out, final = wkv_chunked(q, k, v, w, u, a, b, p, chunk_size=chunk_size)
        else:
            out, final = wkv_recurrent(q, k, v, w, u, a, b, p)
        start = initial_state.length if initial_state is not None else 0
        return out, RecurrentState(start + N, **dict(zip(NAMES, final)))

    form.__name__ = kind
    return form


def _inputs(q, k, v, generator):
    H, D = q.shape[1], q.shape[3]
    w = torch.exp(torch.randn(H, D, generator=generator, dtype=torch.float64) - 1.0)
    u = 0.5 * torch.randn(H, D, generator=generator, dtype=torch.float64)
    return {"w": w.to(q.dtype), "u": u.to(q.dtype)}


register_stateful_mechanism(
    "rwkv4",
    forms={kind: _make(kind) for kind in ("parallel", "chunked", "recurrent")},
    family="attention-free",
    weights_note="each channel has its own decayed average over the tokens, so no one (queries, keys) matrix of weights gives the output",
    papers=(PAPER,),
    patterns=CAUSAL_ONLY,
    params={"chunk_size": Param(64, int, "tokens per chunk of the chunked form", low=1)},
    tensor_inputs=_inputs,
    inputs={"w": TensorInput("(H, D)", "per-channel decays w >= 0 (the state shrinks by e^-w per token)"),
            "u": TensorInput("(H, D)", "per-channel bonus u of the current token")},
    state_size=lambda batch, heads, kv_heads, seq_len, head_dim, v_dim=None, **_: 3 * batch * heads * head_dim,
    complexity="O(N D)",
    summary="RWKV-4 WKV: per-channel exponentially decayed softmax-like average, sigmoid(r) gate",
    test_params={"chunk_size": 16},
)
