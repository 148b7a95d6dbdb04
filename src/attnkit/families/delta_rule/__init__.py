"""Delta-rule mechanisms: DeltaNet, Gated DeltaNet, KDA.

One recurrence (``attnkit.families.delta_rule.forms``), three gates::

    S_t = (I - beta_t k_t k_t^T) Diag(alpha_t) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t

- ``deltanet``: Yang et al., "Parallelizing Linear Transformers with the Delta Rule
  over Sequence Length" (2024), ``alpha_t = 1``;
- ``gated_deltanet``: Yang, Kautz & Hatamizadeh, "Gated Delta Networks: Improving
  Mamba2 with Delta Rule" (2025), ``alpha_t = exp(g_t)`` one per head and token;
- ``kda``: Kimi Team, "Kimi Linear: An Expressive, Efficient Attention
  Architecture" (2025), ``alpha_t = exp(g_t)`` one per key channel.

Tensor inputs, per query head and token: ``beta`` ``(B, H, N)`` in ``(0, 1)`` and
``g = log(alpha)`` ``(B, H, N)`` or ``(B, H, N, Dk)``; the layers computing them
from hidden states are in ``attnkit.nn.inputs.delta_rule``. Forms: ``parallel`` (the
recurrence with materialised transitions: the reference), ``chunked`` (WY / UT
transform, ``chunk_size``) and ``recurrent`` (rank-1 update per token).
The delta rule is defined causally only: the patterns are ``causal-self``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...params import Param, TensorInput
from .forms import delta_rule_parallel, delta_rule_recurrent, delta_rule_weights
from .chunked import delta_rule_chunked
from ...state import RecurrentState, expect_state
from ...registry import MechanismSpec
from ...validation import check_int, check_tensor
from ...builders.stateful import CAUSAL_ONLY, register_stateful_mechanism

DELTANET = "Parallelizing Linear Transformers with the Delta Rule over Sequence Length"
GATED_DELTANET = "Gated Delta Networks: Improving Mamba2 with Delta Rule"
KIMI_LINEAR = "Kimi Linear: An Expressive, Efficient Attention Architecture"

KERNELS = {"parallel": delta_rule_parallel, "chunked": delta_rule_chunked, "recurrent": delta_rule_recurrent}
PARAMS = {
    "chunk_size": Param(64, int, "tokens per chunk of the chunked form", low=1),
    "qk_l2norm": Param(True, bool, "l2-normalise q and k per head, as the papers do"),
}


def stateful_forms(gate: str | None) -> dict:
    """The three stateful forms for ``gate`` in (None, "scalar", "channel")."""

    def make(kind):
        kernel = KERNELS[kind]

        def form(q, k, v, *, causal, scale, initial_state=None, beta=None, g=None, chunk_size=64, qk_l2norm=True):
            if not causal:
                raise ValueError("the delta rule is a causal recurrence; pass causal=True")
            check_inputs(q, k, v, beta, g, gate, chunk_size)
            B, H, N, Dk = q.shape
            shapes = {"S": (B, H, Dk, v.shape[-1])}
            state = expect_state(initial_state, ("S",), shapes, q)
            kw = {"chunk_size": chunk_size} if kind == "chunked" else {}
            out, S = kernel(
                q, k, v, beta, g, scale=scale, initial_state=None if state is None else state["S"],
                qk_l2norm=qk_l2norm, **kw,
            )
            return out, RecurrentState((0 if state is None else state.length) + N, S=S)

        form.__name__ = kind
        return form

    return {kind: make(kind) for kind in KERNELS}


def check_inputs(q, k, v, beta, g, gate, chunk_size):
    B, H, N, Dk = q.shape
    check_int("chunk_size", chunk_size)
    if beta is None:
        raise ValueError("beta is required: a (batch, heads, seq) tensor of writing strengths in (0, 1)")
    check_tensor("beta", beta, (B, H, N), q, what="(batch, heads, seq) writing strengths")
    if gate is None:
        if g is not None:
            raise TypeError("g is not an input of the ungated delta rule; use gated_deltanet or kda")
        return
    if g is None:
        raise ValueError("g is required: the log forget gates log(alpha) <= 0")
    if gate == "scalar":
        check_tensor("g", g, (B, H, N), q, what="(batch, heads, seq) log forget gates")
    else:
        check_tensor("g", g, (B, H, N, Dk), q, what="(batch, heads, seq, head_dim) channel-wise log forget gates")


def example_inputs(gate):
    def make(q, k, v, generator):
        B, H, N, D = q.shape
        beta = torch.sigmoid(torch.randn(B, H, N, generator=generator, dtype=torch.float64))
        out = {"beta": beta.to(q.dtype)}
        if gate is not None:
            shape = (B, H, N) if gate == "scalar" else (B, H, N, D)
            out["g"] = (0.5 * F.logsigmoid(torch.randn(*shape, generator=generator, dtype=torch.float64) + 1)).to(q.dtype)
        return out

    return make


def chunked_flops(batch, heads, seq_len, head_dim, chunk_size=PARAMS["chunk_size"]) -> int:
    """Forward FLOPs of the chunked form: per token ``C D`` each for K K^T, Q K^T, the UT solve
    and P U inside its chunk, and ``D^2`` each for W S, K^T U and Q S across chunks."""
    c, d = chunk_size, head_dim
    return 2 * batch * heads * seq_len * (4 * c * d + 3 * d * d)


def _flops(batch, heads, q_len, kv_len, head_dim, causal):
    return chunked_flops(batch, heads, q_len, head_dim)


def _state_size(batch, heads, kv_heads, seq_len, head_dim, v_dim=None, **params):
    return batch * heads * head_dim * (v_dim or head_dim)


_BETA = TensorInput("(B, H, N)", "writing strengths in (0, 1)")
_INPUTS = {
    None: {"beta": _BETA},
    "scalar": {"beta": _BETA, "g": TensorInput("(B, H, N)", "per-token log forget gates log(alpha) <= 0")},
    "channel": {"beta": _BETA, "g": TensorInput("(B, H, N, Dk)", "per-token, per-channel log forget gates <= 0")},
}


def register_delta_mechanism(name, *, gate, papers, summary) -> MechanismSpec:
    forms = stateful_forms(gate)

    return register_stateful_mechanism(
        name,
        forms=forms,
        family="delta-rule",
        papers=papers,
        patterns=CAUSAL_ONLY,
        params=dict(PARAMS),
        tensor_inputs=example_inputs(gate),
        inputs=_INPUTS[gate],
        tensor_inputs_per_token=("beta",) if gate is None else ("beta", "g"),
        flops=_flops,
        state_size=_state_size,
        complexity="O(N)",
        summary=summary,
        test_params={"chunk_size": 16},
        weights=_weights(gate),
    )


def _weights(gate):
    def weights(q, k, v, *, causal, mask, scale, beta=None, g=None, chunk_size=64, qk_l2norm=True):
        if not causal:
            raise ValueError("the delta rule is a causal recurrence; pass causal=True")
        check_inputs(q, k, v, beta, g, gate, chunk_size)
        return delta_rule_weights(q, k, beta, g, scale=scale, qk_l2norm=qk_l2norm)

    return weights


register_delta_mechanism(
    "deltanet",
    gate=None,
    papers=(DELTANET,),
    summary="delta rule S = S (I - b k k^T) + b v k^T with L2-normalised q, k; chunked WY/UT form",
)
register_delta_mechanism(
    "gated_deltanet",
    gate="scalar",
    papers=(GATED_DELTANET, DELTANET),
    summary="gated delta rule: S = (I - b k k^T) exp(g) S + b k v^T, one decay per head and token",
)
register_delta_mechanism(
    "kda",
    gate="channel",
    papers=(KIMI_LINEAR, GATED_DELTANET),
    summary="Kimi Delta Attention: S = (I - b k k^T) Diag(exp(g)) S + b k v^T, channel-wise gates",
)
