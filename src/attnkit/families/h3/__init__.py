"""H3, from Fu, Dao et al., "Hungry Hungry Hippos: Towards Language Modeling with State Space
Models" (2023), section 3.1.

The H3 layer multiplies a query into a diagonal SSM over the product of a *shifted* key and the
value, per head (the multi-head form of eq. 2):

    k~_t = sum_{i=0}^{m-1} s_i * k_{t-i}                 shift SSM: a short causal filter per channel
    S_t  = diag(a) S_{t-1} + k~_t^T v_t                   diagonal SSM, one decay a_c per key channel
    o_t  = q_t S_t * scale

The shift SSM remembers the last ``m`` keys (it lets a token compare with the previous one,
the induction-head pattern); the diagonal SSM holds ``Dk x Dv`` per head. The paper's diagonal
SSM is S4D with complex modes; this op uses its real-decay variant (``a = exp(log_decay)``,
``log_decay <= 0`` per channel). Tensor inputs ``shift`` ``(heads, m, Dk)`` and ``log_decay``
``(heads, Dk)``; ``attnkit.nn.inputs.h3.H3Filters`` learns them. The diagonal SSM runs on GLA's
forms (a GLA whose gate is constant in time). Causal only. State: GLA's ``S`` and the last
``m - 1`` keys.
"""
from __future__ import annotations

import torch

from ... import registry
from ...builders.stateful import CAUSAL_ONLY, register_stateful_mechanism
from ...kernels.positions import repeat_kv
from ...params import Param, TensorInput
from ...state import RecurrentState, expect_state
from ...validation import check_tensor

SHIFT = 4  # the shift SSM's length m in the input module (the last m - 1 keys are state)
PAPER = "Hungry Hungry Hippos: Towards Language Modeling with State Space Models"


def shifted_keys(k, shift, k_tail):
    """``k~_t = sum_i shift[i] * k_{t-i}``, the keys before these taken from ``k_tail`` (zeros at the start)."""
    m = shift.shape[1]
    full = torch.cat([k_tail, k], dim=2)
    N = k.shape[2]
    return sum(shift[None, :, i, None, :] * full[:, :, m - 1 - i : m - 1 - i + N] for i in range(m)), full[:, :, N:]


def _check(q, causal, shift, log_decay) -> int:
    """The checks of every form; returns the shift SSM's length ``m``."""
    if not causal:
        raise ValueError("h3 is a causal recurrence; pass causal=True")
    _, H, _, D = q.shape
    if not isinstance(shift, torch.Tensor) or shift.ndim != 3:
        raise ValueError("shift must be a tensor of shape (heads, m, head_dim): the shift SSM's filter")
    check_tensor("shift", shift, (H, shift.shape[1], D), q, what="(heads, m, head_dim)")
    check_tensor("log_decay", log_decay, (H, D), q, what="(heads, head_dim) log decays <= 0")
    return shift.shape[1]


def h3_weights(q, k, v, *, causal, mask, scale, shift=None, log_decay=None, chunk_size=32):
    """``w_ts = scale sum_c q_tc a_c^(t-s) k~_sc`` for ``s <= t``: GLA's implicit matrix over the shifted keys
    with a gate constant in time (a sequence from its start: the shift SSM sees zeros before it)."""
    m = _check(q, causal, shift, log_decay)
    B, H, N, D = q.shape
    k_shifted, _ = shifted_keys(repeat_kv(k, H), shift, q.new_zeros(B, H, m - 1, D))
    gk = log_decay[None, :, None, :].expand(B, H, N, D)
    return registry.get("gla").weights(q, k_shifted, v, causal=True, mask=None, scale=scale, gk=gk)


def _make(kind):
    def form(q, k, v, *, causal, scale, initial_state=None, shift=None, log_decay=None, chunk_size=32):
        m = _check(q, causal, shift, log_decay)
        B, H, N, D = q.shape
        gla = registry.get("gla").stateful_forms[kind]
        tail_shape = (B, H, m - 1, D)
        state = expect_state(initial_state, ("S", "k_tail"), {"S": (B, H, D, v.shape[-1]), "k_tail": tail_shape}, q)
        if state is None:
            k_tail, inner = q.new_zeros(tail_shape), None
        else:
            k_tail, inner = state["k_tail"], RecurrentState(state.length, S=state["S"])
        k_shifted, k_tail = shifted_keys(repeat_kv(k, H), shift, k_tail)
        gk = log_decay[None, :, None, :].expand(B, H, N, D)
        out, state = gla(q, k_shifted, repeat_kv(v, H), causal=True, scale=scale, initial_state=inner, gk=gk,
                         **({"chunk_size": chunk_size} if kind == "chunked" else {}))
        return out, RecurrentState(state.length, S=state["S"], k_tail=k_tail)

    form.__name__ = kind
    return form


def _inputs(q, k, v, generator):
    H, D = q.shape[1], q.shape[3]
    f64 = torch.float64
    shift = torch.randn(H, SHIFT, D, generator=generator, dtype=f64) / 2
    log_decay = -torch.exp(torch.randn(H, D, generator=generator, dtype=f64) - 1)
    return {"shift": shift.to(q.dtype), "log_decay": log_decay.to(q.dtype)}


register_stateful_mechanism(
    "h3",
    forms={kind: _make(kind) for kind in ("parallel", "chunked", "recurrent")},
    family="attention-free",
    papers=(PAPER,),
    patterns=CAUSAL_ONLY,
    weights=h3_weights,
    params={"chunk_size": Param(32, int, "tokens per chunk of the chunked form", low=1)},
    tensor_inputs=_inputs,
    inputs={"shift": TensorInput("(H, m, Dk)", "shift-SSM filter over the last m keys"),
            "log_decay": TensorInput("(H, Dk)", "diagonal SSM log decays <= 0 per key channel")},
    state_size=lambda batch, heads, kv_heads, seq_len, head_dim, v_dim=None, shift=None, **_: (
        batch * heads * head_dim * ((v_dim or head_dim) + (shift.shape[1] if shift is not None else SHIFT) - 1)),
    complexity="O(N D^2)",
    summary="H3: q times a diagonal SSM over (shift-SSM k)^T v, per head",
    test_params={"chunk_size": 16},
)
