"""Hyena, from Poli et al., "Hyena Hierarchy: Towards Larger Convolutional Language Models" (2023).

The order-2 Hyena operator (section 3.1, eq. 3 with N = 2) interleaves long causal
convolutions with element-wise gates, per channel:

    z_1 = v,   z_2 = x_1 * (h_1 conv z_1),   y = x_2 * (h_2 conv z_2),
    (h conv u)_t = sum_{s<=t} h[t - s] u_s

The filters are *implicit* (section 3.3): ``h[t] = Window(t) * FFN(PositionalEncoding(t))``,
computed by ``attnkit.nn.inputs.hyena.HyenaFilter``; here they are a tensor input
``filters`` ``(2, heads, L, head_dim)`` whose ``L`` (at least the sequence length, the state
included) lags are used as given. ``x_2`` is the query and ``x_1`` the key; q, k and v share
``head_dim``; ``scale`` is not used. The short convolutions Hyena applies to its projections
belong to the layer, not to this op. Causal only.

Forms: ``parallel`` (the Toeplitz matrix of every lag written out, the reference), ``fft``
(the convolutions by FFT in O(N log N), the paper's; the default), ``recurrent`` (one token at
a time: decoding). A long convolution has no constant-size state: the state keeps the
sequence's ``v`` and gated ``u = x_1 * (h_1 conv v)`` so far, ``2 N D`` numbers per head.
"""
from __future__ import annotations

import torch

from ...builders.stateful import CAUSAL_ONLY, register_stateful_mechanism
from ...kernels.positions import repeat_kv
from ...state import RecurrentState, expect_state
from ...params import TensorInput
from ...validation import check_tensor
from .forms import hyena_fft, hyena_parallel, hyena_recurrent

PAPER = "Hyena Hierarchy: Towards Larger Convolutional Language Models"
KERNELS = {"parallel": hyena_parallel, "fft": hyena_fft, "recurrent": hyena_recurrent}


def _make(kind):
    kernel = KERNELS[kind]

    def form(q, k, v, *, causal, scale, initial_state=None, filters=None):
        if not causal:
            raise ValueError("hyena is a causal convolution; pass causal=True")
        B, H, N, D = q.shape
        if v.shape[-1] != D:
            raise ValueError(f"v has head_dim {v.shape[-1]} but q has {D}; Hyena gates channel by channel")
        if not isinstance(filters, torch.Tensor) or filters.ndim != 4:
            raise ValueError("filters must be a tensor of shape (2, heads, L, head_dim): h_1 and h_2 for L lags")
        check_tensor("filters", filters, (2, H, filters.shape[2], D), q, what="(2, heads, L, head_dim)")
        P = initial_state.length if initial_state is not None else 0
        if filters.shape[2] < P + N:
            raise ValueError(f"filters hold {filters.shape[2]} lags but the sequence reaches {P + N} tokens")
        state = expect_state(initial_state, ("v", "u"), {"v": (B, H, P, D), "u": (B, H, P, D)}, q)
        v_past, u_past = (q.new_zeros(B, H, 0, D),) * 2 if state is None else (state["v"], state["u"])
        out, (v_all, u_all) = kernel(q, repeat_kv(k, H), repeat_kv(v, H), filters, v_past, u_past)
        return out, RecurrentState(P + N, v=v_all, u=u_all)

    form.__name__ = kind
    return form


def _inputs(q, k, v, generator):
    H, N, D = q.shape[1], q.shape[2], q.shape[3]
    lags = torch.arange(N + 8, dtype=torch.float64)
    decay = torch.exp(-lags[None, None, :, None] * torch.rand(2, H, 1, D, generator=generator, dtype=torch.float64))
    filters = decay * torch.randn(2, H, N + 8, D, generator=generator, dtype=torch.float64) / 4
    return {"filters": filters.to(q.dtype)}


register_stateful_mechanism(
    "hyena",
    forms={kind: _make(kind) for kind in KERNELS},
    default_form="fft",
    family="attention-free",
    weights_note="two per-channel convolutions with a gate between them: no one (queries, keys) matrix of weights gives the output",
    papers=(PAPER,),
    patterns=CAUSAL_ONLY,
    tensor_inputs=_inputs,
    inputs={"filters": TensorInput("(2, H, L, D)", "the long filters h_1, h_2 over L >= N lags")},
    state_size=lambda batch, heads, kv_heads, seq_len, head_dim, v_dim=None, **_: 2 * batch * heads * seq_len * head_dim,
    complexity="O(N log N)",
    summary="Hyena order 2: y = q * (h2 conv (k * (h1 conv v))), long implicit filters, FFT",
)
