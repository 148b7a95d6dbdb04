"""Log-linear attention on a Mamba-2 style gated recurrence (``attnkit.families.log_linear.forms``).

Guo, Yang, Goel, Xing, Dao & Kim, "Log-Linear Attention" (2025): a Fenwick-tree
partition of the past with one state and one data-dependent weight per level,
``O(log N)`` states instead of one. Tensor inputs, per query head and token:
``g`` ``(B, H, N)`` log decays ``<= 0`` (Mamba-2's ``dt * A``) and ``lam``
``(B, H, N, levels)`` non-negative level weights, with ``levels`` at least
``bit_length(last position) + 1``; ``attnkit.nn.inputs.log_linear`` computes them.
``chunk_size`` (a power of two) is an execution knob. Causal self-attention only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...params import Param, TensorInput
from . import forms as log_linear
from ...state import RecurrentState, expect_state
from ...kernels.positions import repeat_kv
from ...validation import check_int, check_tensor
from ...builders.stateful import CAUSAL_ONLY, register_stateful_mechanism

PAPER = "Log-Linear Attention"
KERNELS = {
    "parallel": log_linear.log_linear_parallel,
    "chunked": log_linear.log_linear_chunked,
    "recurrent": log_linear.log_linear_recurrent,
}


def levels_for(seq_len: int) -> int:
    """Levels needed for positions ``0 .. seq_len - 1``."""
    return max(seq_len - 1, 1).bit_length() + 1


def level_state(q, v, lam, initial_state, chunk_size):
    """The checks every log-linear mechanism makes: ``chunk_size``, ``lam`` and the per-level state.

    Returns ``(S0, start)``: the initial per-level states ``(B, H, levels, Dk, Dv)`` (or None)
    and the absolute position of the first new token.
    """
    check_int("chunk_size", chunk_size)
    if chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a positive power of two (chunks align with Fenwick levels), got {chunk_size!r}")
    if lam is None:
        raise ValueError("lam is required: (batch, heads, seq, levels) non-negative level weights")
    B, H, N, Dk = q.shape
    Lv = lam.shape[-1] if isinstance(lam, torch.Tensor) and lam.ndim == 4 else 0
    check_tensor("lam", lam, (B, H, N, Lv), q, what="(batch, heads, seq, levels) level weights")
    state = expect_state(initial_state, ("S",), {"S": (B, H, Lv, Dk, v.shape[-1])}, q)
    start = initial_state.length if initial_state is not None else 0
    if Lv < levels_for(start + N):
        raise ValueError(f"lam has {Lv} levels; positions up to {start + N - 1} need at least {levels_for(start + N)}")
    if state is not None and start == 0:
        raise ValueError("initial_state has length 0; pass initial_state=None to start a sequence")
    return (None if state is None else state["S"]), start


def _check(q, v, causal, g, lam, initial_state, chunk_size):
    """The checks of every form: ``(S0, start)`` as :func:`level_state`."""
    if not causal:
        raise ValueError("log-linear attention over a gated recurrence is causal; pass causal=True")
    if g is None:
        raise ValueError("g is required: (batch, heads, seq) log decays <= 0")
    check_tensor("g", g, q.shape[:3], q, what="(batch, heads, seq) log decays")
    return level_state(q, v, lam, initial_state, chunk_size)


def _weights(q, k, v, *, causal, mask, scale, g=None, lam=None, chunk_size=64):
    """``(Q K^T * H)`` of a sequence from position 0: ``H_ts = lam[t, l(t, s)] exp(b_t - b_s)`` (scale in q)."""
    _check(q, v, causal, g, lam, None, chunk_size)
    pos = torch.arange(q.shape[2], device=q.device)
    return log_linear.block_weights(q * scale, repeat_kv(k, q.shape[1]), g, lam, pos)


def _make(kind):
    kernel = KERNELS[kind]

    def form(q, k, v, *, causal, scale, initial_state=None, g=None, lam=None, chunk_size=64):
        H, N = q.shape[1], q.shape[2]
        S0, start = _check(q, v, causal, g, lam, initial_state, chunk_size)
        kw = {"chunk_size": chunk_size} if kind == "chunked" else {}
        out, S = kernel(q * scale, repeat_kv(k, H), repeat_kv(v, H), g, lam, start=start, S0=S0, **kw)
        return out, RecurrentState(start + N, S=S)

    form.__name__ = kind
    return form


def _inputs(q, k, v, generator):
    B, H, N, D = q.shape
    g = 0.5 * F.logsigmoid(torch.randn(B, H, N, generator=generator, dtype=torch.float64) + 1)
    return {"g": g.to(q.dtype), "lam": example_level_weights(q, generator)}


def example_level_weights(q, generator):
    """Random ``lam (B, H, N, levels_for(N))`` in q's dtype: softplus of a standard normal."""
    B, H, N, D = q.shape
    return F.softplus(torch.randn(B, H, N, levels_for(N), generator=generator, dtype=torch.float64)).to(q.dtype)


def level_state_size(batch, heads, kv_heads, seq_len, head_dim, v_dim=None, lam=None, **params):
    """Numbers in the per-level states ``(B, H, L, Dk, Dv)`` of a log-linear mechanism: one state per
    level of ``lam`` when it is given (the state keeps every level ``lam`` weights), else ``levels_for(N)``."""
    levels = lam.shape[-1] if lam is not None else levels_for(seq_len)
    return batch * heads * levels * head_dim * (v_dim or head_dim)


def _flops(batch, heads, q_len, kv_len, head_dim, causal, chunk_size=64):
    """Chunked form: the C x C block (scores, values) and one read of all level states per token."""
    return 2 * batch * heads * q_len * (2 * chunk_size * head_dim + (levels_for(q_len) + 1) * head_dim * head_dim)


_FORMS = {kind: _make(kind) for kind in KERNELS}

register_stateful_mechanism(
    "log_linear_mamba2",
    weights=_weights,
    forms=_FORMS,
    family="recurrent-attention",
    papers=(PAPER,),
    patterns=CAUSAL_ONLY,
    params={"chunk_size": Param(64, int, 'tokens per chunk of the chunked form (a power of two)', low=1)},
    tensor_inputs=_inputs,
    inputs={"g": TensorInput("(B, H, N)", "per-token log decays <= 0"), "lam": TensorInput("(B, H, N, levels)", "non-negative weight of each Fenwick level per token")},
    tensor_inputs_per_token=("g", "lam"),
    flops=_flops,
    state_size=level_state_size,
    complexity="O(N log N)",
    summary="Fenwick-tree levels of a gated linear recurrence, one weighted state per level (O(log N) states)",
    test_params={"chunk_size": 8},
)
