"""RAT: recurrence inside chunks, softmax attention across chunks (``attnkit.families.rat.forms``).

Wei, Yadav, Pascanu & Gulcehre, "RAT: Bridging RNN Efficiency and Attention
Accuracy in Language Modeling" (2025). Tensor input: the forget gate ``g``
``(B, H, N, D)`` in ``(0, 1)``, per query head, token and channel (shared by keys
and values, so v's head_dim must equal q's); ``attnkit.nn.inputs.rat.RATGate``
computes it. ``chunk_size`` is the paper's ``L`` (16 in its headline numbers): an
equation parameter, not only an execution knob. Causal self-attention only.
The state holds one key/value summary per finished chunk, so it grows as ``N / L``.
"""
from __future__ import annotations

import torch

from ...params import Param, TensorInput
from . import forms as rat
from ...state import RecurrentState, expect_state
from ...kernels.positions import repeat_kv
from ...validation import check_int, check_tensor
from ...builders.stateful import CAUSAL_ONLY, register_stateful_mechanism

PAPER = "RAT: Bridging RNN Efficiency and Attention Accuracy in Language Modeling"
KERNELS = {"parallel": rat.rat_parallel, "chunked": rat.rat_chunked, "recurrent": rat.rat_recurrent}
NAMES = ("k_end", "v_end", "k_cur", "v_cur")
DEFAULT_CHUNK = 16


def _make(kind):
    kernel = KERNELS[kind]

    def form(q, k, v, *, causal, scale, initial_state=None, g=None, chunk_size=16):
        if not causal:
            raise ValueError("RAT is a causal recurrence; pass causal=True")
        check_int("chunk_size", chunk_size)
        B, H, N, D = q.shape
        if v.shape[-1] != D:
            raise ValueError(f"v has head_dim {v.shape[-1]} but q has {D}; RAT's gate is shared by k and v")
        if g is None:
            raise ValueError("g is required: the (batch, heads, seq, head_dim) forget gates in (0, 1)")
        check_tensor("g", g, (B, H, N, D), q, what="(batch, heads, seq, head_dim) forget gates")
        start = initial_state.length if initial_state is not None else 0
        shapes = {"k_end": (B, H, start // chunk_size, D), "v_end": (B, H, start // chunk_size, D),
                  "k_cur": (B, H, D), "v_cur": (B, H, D)}
        state = expect_state(initial_state, NAMES, shapes, q)
        tensors = {n: q.new_zeros(s) for n, s in shapes.items()} if state is None else state.tensors()
        out, final = kernel(q * scale, repeat_kv(k, H), repeat_kv(v, H), g, L=chunk_size, start=start, **tensors)
        return out, RecurrentState(start + N, **dict(zip(NAMES, final)))

    form.__name__ = kind
    return form


def _inputs(q, k, v, generator):
    B, H, N, D = q.shape
    return {"g": torch.sigmoid(torch.randn(B, H, N, D, generator=generator, dtype=torch.float64)).to(q.dtype)}


def _state_size(batch, heads, kv_heads, seq_len, head_dim, v_dim=None, **params):
    """Key and value summaries of the finished chunks plus the running pair, at the default chunk size."""
    return batch * heads * (head_dim + (v_dim or head_dim)) * (seq_len // DEFAULT_CHUNK + 1)


def _flops(batch, heads, q_len, kv_len, head_dim, causal):
    """Scores and weighted sums against ~N/L summaries per query (causal: half), plus the scan."""
    return 4 * batch * heads * head_dim * (q_len * (kv_len // DEFAULT_CHUNK) // 2 + q_len) + 6 * batch * heads * q_len * head_dim


_FORMS = {kind: _make(kind) for kind in KERNELS}

register_stateful_mechanism(
    "rat",
    weights_note="the forget gate acts per value channel, so the mixing is a different (N, N) matrix for each channel, not one attention matrix",
    forms=_FORMS,
    family="recurrent-attention",
    papers=(PAPER,),
    patterns=CAUSAL_ONLY,
    params={"chunk_size": Param(DEFAULT_CHUNK, int, "tokens per chunk (the recurrence runs inside, attention across chunks)", low=1)},
    tensor_inputs=_inputs,
    inputs={"g": TensorInput("(B, H, N, Dk)", "per-token, per-channel forget gates in (0, 1)")},
    tensor_inputs_per_token=("g",),
    flops=_flops,
    state_size=_state_size,
    complexity="O(N^2 / L)",
    summary="gated linear recurrence inside chunks of L tokens, softmax attention over chunk summaries",
)
