"""Mamba-1's selective scan, from Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective
State Spaces" (2023), section 3 and Algorithm 2.

Every channel ``d`` of the input ``x`` runs its own diagonal state space of size ``Dk`` whose
step size ``dt_t[d]`` and projections ``B_t``, ``C_t`` depend on the token (the selection):

    h_t[d, :] = exp(dt_t[d] A[d, :]) * h_{t-1}[d, :] + dt_t[d] x_t[d] B_t      (A_bar, and B_bar ~ dt B)
    y_t[d]    = C_t . h_t[d, :] + D[d] x_t[d]

``A_bar = exp(dt A)`` is the paper's zero-order hold; for ``B_bar`` the authors' code (and this
op) uses ``dt B``, the first-order term of the zero-order hold. In attnkit's terms ``C`` is the
query, ``B`` the key and ``x`` the value, per head: the decay is per (channel, state) pair,
which is what sets it apart from Mamba-2's scalar-per-head decay (``mamba2``). Tensor inputs:
``dt`` ``(B, H, N, Dv)`` step sizes > 0, ``A`` ``(H, Dv, Dk)`` < 0, ``D`` ``(H, Dv)`` the skip;
``attnkit.nn.inputs.mamba.MambaInputs`` learns them (the Mamba block's causal convolution and
``silu(z)`` output gate belong to the layer around the op and are not part of it). ``scale`` is
not used. Causal only. State: ``h`` ``(B, H, Dv, Dk)``.

Forms: ``parallel`` (the decays between every pair of tokens materialised: the reference),
``chunked`` (the same inside chunks, ``h`` carried across), ``recurrent`` (the scan).
"""
from __future__ import annotations

import torch

from ...builders.stateful import CAUSAL_ONLY, register_stateful_mechanism
from ...kernels.positions import repeat_kv
from ...params import Param, TensorInput
from ...state import RecurrentState, expect_state
from ...validation import check_int, check_tensor
from .forms import scan_chunked, scan_parallel, scan_recurrent

PAPER = "Mamba: Linear-Time Sequence Modeling with Selective State Spaces"


def _make(kind):
    def form(q, k, v, *, causal, scale, initial_state=None, dt=None, A=None, D=None, chunk_size=32):
        if not causal:
            raise ValueError("mamba is a causal recurrence; pass causal=True")
        check_int("chunk_size", chunk_size)
        Bsz, H, N, Dk = q.shape
        Dv = v.shape[-1]
        check_tensor("dt", dt, (Bsz, H, N, Dv), q, what="(batch, heads, seq, v_dim) step sizes > 0")
        check_tensor("A", A, (H, Dv, Dk), q, what="(heads, v_dim, head_dim) negative rates")
        check_tensor("D", D, (H, Dv), q, what="(heads, v_dim) skip weights")
        state = expect_state(initial_state, ("h",), {"h": (Bsz, H, Dv, Dk)}, q)
        h0 = q.new_zeros(Bsz, H, Dv, Dk) if state is None else state["h"]
        k, v = repeat_kv(k, H), repeat_kv(v, H)
        if kind == "parallel":
            y, h = scan_parallel(q, k, v, dt, A, D, h0)
        elif kind == "chunked":
            y, h = scan_chunked(q, k, v, dt, A, D, h0, chunk_size=chunk_size)
        else:
            y, h = scan_recurrent(q, k, v, dt, A, D, h0)
        start = initial_state.length if initial_state is not None else 0
        return y, RecurrentState(start + N, h=h)

    form.__name__ = kind
    return form


def _inputs(q, k, v, generator):
    Bsz, H, N, Dk = q.shape
    Dv = v.shape[-1]
    f64 = torch.float64
    dt = torch.nn.functional.softplus(torch.randn(Bsz, H, N, Dv, generator=generator, dtype=f64) - 1.0)
    A = -torch.exp(0.5 * torch.randn(H, Dv, Dk, generator=generator, dtype=f64))
    D = torch.randn(H, Dv, generator=generator, dtype=f64)
    return {"dt": dt.to(q.dtype), "A": A.to(q.dtype), "D": D.to(q.dtype)}


register_stateful_mechanism(
    "mamba",
    forms={kind: _make(kind) for kind in ("parallel", "chunked", "recurrent")},
    family="attention-free",
    weights_note="each (channel, state) pair has its own decay, so no one (queries, keys) matrix of weights gives the output",
    papers=(PAPER,),
    patterns=CAUSAL_ONLY,
    params={"chunk_size": Param(32, int, "tokens per chunk of the chunked form", low=1)},
    tensor_inputs=_inputs,
    inputs={"dt": TensorInput("(B, H, N, Dv)", "per-token, per-channel step sizes > 0"),
            "A": TensorInput("(H, Dv, Dk)", "negative state rates (A_bar = exp(dt A))"),
            "D": TensorInput("(H, Dv)", "skip weights (y += D x)")},
    tensor_inputs_per_token=("dt",),
    state_size=lambda batch, heads, kv_heads, seq_len, head_dim, v_dim=None, **_: (
        batch * heads * head_dim * (v_dim or head_dim)),
    complexity="O(N Dv Dk)",
    summary="Mamba-1 selective scan: h = exp(dt A) h + dt x B^T per channel, y = h C + D x",
    test_params={"chunk_size": 16},
)
