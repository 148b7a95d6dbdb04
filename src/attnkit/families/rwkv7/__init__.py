"""RWKV-7 (Goose) time mixing: the generalised delta rule with vector-valued decay and learning rate.

Peng et al., "RWKV-7 "Goose" with Expressive Dynamic State Evolution" (2025), eq. 17-19. In
the paper's row-vector notation, with a state ``wkv`` of ``(Dv, Dk)`` per head::

    wkv_t = wkv_{t-1} (diag(w_t) - kappa^_t^T (a_t . kappa^_t)) + v_t^T k~_t,   o_t = wkv_t r_t^T

``w_t`` the per-channel decay in ``(0, 1)``, ``kappa^_t`` the normalised removal key and
``a_t`` the vector-valued in-context learning rate. attnkit holds the transposed state
``S = wkv^T`` ``(Dk, Dv)``, as the other delta rules, and takes the transition's two vectors as
the authors' kernel does, ``a = -kappa^`` and ``b = kappa^ . a_t``::

    S_t = (diag(w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T,   o_t = S_t^T r_t

so any diagonal-plus-rank-one transition runs (the paper's choice keeps its eigenvalues in
``[-1, 1]``). The receptance ``r`` is the query; ``k`` is the paper's replacement key ``k~``.
Tensor inputs per query head and token, ``(B, H, N, Dk)``: ``log_w = log(w) <= 0``, ``a``,
``b``; ``attnkit.nn.inputs.rwkv7.RWKV7Inputs`` computes them from the hidden states and the
keys. The token shift, the bonus ``(r_t . (rho . k~_t)) v_t``, the group norm and the output
gate belong to the RWKV block, ``attnkit.nn.RWKV7TimeMix``, not to this op. ``scale`` is not used. Causal only.

Forms: ``parallel`` (the recurrence with the ``Dk x Dk`` transition materialised: the
reference), ``chunked`` (a UT transform per chunk like the delta rule's,
:mod:`attnkit.families.rwkv7.chunked`), ``recurrent`` (two rank-one updates per token).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...builders.stateful import CAUSAL_ONLY, register_stateful_mechanism
from ...kernels.positions import repeat_kv
from ...params import Param, TensorInput
from ...state import RecurrentState, expect_state
from ...validation import check_int, check_tensor
from .chunked import rwkv7_chunked

PAPER = 'RWKV-7 "Goose" with Expressive Dynamic State Evolution'


def rwkv7_parallel(r, k, v, log_w, a, b, S0, **_):
    """Reference: ``S_t = (diag(w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T r_t``, transitions materialised."""
    S, outs = S0, []
    eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device)
    for t in range(r.shape[2]):
        transition = eye * log_w[:, :, t, None, :].exp() + b[:, :, t, :, None] * a[:, :, t, None, :]
        S = transition @ S + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append(torch.einsum("bhd,bhde->bhe", r[:, :, t], S))
    return torch.stack(outs, dim=2), S


def rwkv7_recurrent(r, k, v, log_w, a, b, S0, **_):
    """Decoding form, O(Dk Dv) per token: ``s = a^T S``; ``S = w S + b s + k v^T``; ``o = S^T r``."""
    S, outs = S0, []
    w = log_w.exp().unsqueeze(-1)
    for t in range(r.shape[2]):
        s = a[:, :, t, None, :] @ S  # (B, H, 1, Dv)
        S = torch.addcmul(torch.addcmul(w[:, :, t] * S, b[:, :, t, :, None], s), k[:, :, t, :, None], v[:, :, t, None, :])
        outs.append(r[:, :, t, None, :] @ S)
    return torch.cat(outs, dim=2), S


KERNELS = {"parallel": rwkv7_parallel, "chunked": rwkv7_chunked, "recurrent": rwkv7_recurrent}


def check_inputs(q, log_w, a, b, chunk_size):
    B, H, N, D = q.shape
    check_int("chunk_size", chunk_size)
    for name, t, what in (("log_w", log_w, "log decays <= 0"), ("a", a, "transition vectors (-kappa^)"),
                          ("b", b, "transition vectors (kappa^ times the learning rate)")):
        check_tensor(name, t, (B, H, N, D), q, what=f"(batch, heads, seq, head_dim) {what}")


def _make(kind):
    kernel = KERNELS[kind]

    def form(q, k, v, *, causal, scale, initial_state=None, log_w=None, a=None, b=None, chunk_size=32):
        if not causal:
            raise ValueError("rwkv7 is a causal recurrence; pass causal=True")
        check_inputs(q, log_w, a, b, chunk_size)
        B, H, N, D = q.shape
        state = expect_state(initial_state, ("S",), {"S": (B, H, D, v.shape[-1])}, q)
        S0 = q.new_zeros(B, H, D, v.shape[-1]) if state is None else state["S"]
        start = 0 if state is None else state.length
        if N == 0:
            return v.new_zeros(B, H, 0, v.shape[-1]), RecurrentState(start, S=S0)
        out, S = kernel(q, repeat_kv(k, H), repeat_kv(v, H), log_w, a, b, S0, chunk_size=chunk_size)
        return out, RecurrentState(start + N, S=S)

    form.__name__ = kind
    return form


def _weights(q, k, v, *, causal, mask, scale, log_w=None, a=None, b=None, chunk_size=32):
    """The attention matrix ``o = W v`` (no initial state): the recurrence run on one-hot values."""
    if not causal:
        raise ValueError("rwkv7 is a causal recurrence; pass causal=True")
    check_inputs(q, log_w, a, b, chunk_size)
    B, H, N, D = q.shape
    one_hot = torch.eye(N, dtype=q.dtype, device=q.device).expand(B, H, N, N)
    return rwkv7_recurrent(q, repeat_kv(k, H), one_hot, log_w, a, b, q.new_zeros(B, H, D, N))[0]


def _inputs(q, k, v, generator):
    """The paper's parametrisation: ``log_w = -e^-0.5 sigmoid(.)``, ``a = -kappa^``, ``b = kappa^ . a_t``."""
    B, H, N, D = q.shape
    draw = lambda: torch.randn(B, H, N, D, generator=generator, dtype=torch.float64)  # noqa: E731
    log_w = -0.606531 * torch.sigmoid(draw())
    kappa = F.normalize(draw(), dim=-1)
    rate = torch.sigmoid(draw())
    return {"log_w": log_w.to(q.dtype), "a": (-kappa).to(q.dtype), "b": (kappa * rate).to(q.dtype)}


register_stateful_mechanism(
    "rwkv7",
    forms={kind: _make(kind) for kind in KERNELS},
    family="delta-rule",
    papers=(PAPER,),
    patterns=CAUSAL_ONLY,
    params={"chunk_size": Param(32, int, "tokens per chunk of the chunked form", low=1)},
    tensor_inputs=_inputs,
    inputs={"log_w": TensorInput("(B, H, N, Dk)", "per-token, per-channel log decays <= 0"),
            "a": TensorInput("(B, H, N, Dk)", "transition vector a_t of diag(w_t) + b_t a_t^T (RWKV-7: -kappa^_t)"),
            "b": TensorInput("(B, H, N, Dk)", "transition vector b_t (RWKV-7: kappa^_t times the in-context learning rate)")},
    tensor_inputs_per_token=("log_w", "a", "b"),
    state_size=lambda batch, heads, kv_heads, seq_len, head_dim, v_dim=None, **_: (
        batch * heads * head_dim * (v_dim or head_dim)),
    complexity="O(N C D + N D^2)",
    summary="RWKV-7 (Goose): S = (diag(w_t) + b_t a_t^T) S + k v^T, the generalised delta rule; chunked UT form",
    test_params={"chunk_size": 16},
    weights=_weights,
)
