"""Log-linear Gated DeltaNet (``attnkit.families.log_linear.forms_delta``).

Guo, Yang, Goel, Xing, Dao & Kim, "Log-Linear Attention" (2025), applied to the gated
delta rule of Yang, Kautz & Hatamizadeh, "Gated Delta Networks: Improving Mamba2 with
Delta Rule" (2025): the Fenwick-tree levels of ``log_linear_mamba2``, each an
``S (Dk, Dv)`` evolving under ``A_t = exp(g_t) (I - beta_t k_t k_t^T)``, read with one
data-dependent weight per level. Tensor inputs, per query head and token: ``beta``
``(B, H, N)`` in ``(0, 1)``, ``g`` ``(B, H, N)`` log decays ``<= 0`` and ``lam``
``(B, H, N, levels)`` non-negative level weights, ``levels`` at least
``bit_length(last position) + 1``; ``attnkit.nn.inputs.log_linear`` computes them.
As ``gated_deltanet``, q and k are L2-normalised (``qk_l2norm``). ``chunk_size`` (a
power of two) is an execution knob. Causal self-attention only.
"""
from __future__ import annotations

import torch

from ...params import Param, TensorInput
from . import forms as log_linear_delta
from ..delta_rule.forms import delta_rule_weights, prepare
from ...state import RecurrentState
from ..delta_rule import GATED_DELTANET, check_inputs, example_inputs
from ...builders.stateful import CAUSAL_ONLY, register_stateful_mechanism
from ..log_linear.forms import pair_weights
from ..log_linear import PAPER, example_level_weights, level_state, level_state_size, levels_for

KERNELS = {
    "parallel": log_linear_delta.log_linear_delta_parallel,
    "chunked": log_linear_delta.log_linear_delta_chunked,
    "recurrent": log_linear_delta.log_linear_delta_recurrent,
}


def _make(kind):
    kernel = KERNELS[kind]

    def form(q, k, v, *, causal, scale, initial_state=None, beta=None, g=None, lam=None, chunk_size=64,
             qk_l2norm=True):
        if not causal:
            raise ValueError("log-linear Gated DeltaNet is a causal recurrence; pass causal=True")
        check_inputs(q, k, v, beta, g, "scalar", chunk_size)
        S0, start = level_state(q, v, lam, initial_state, chunk_size)
        q, k, v, _ = prepare(q, k, v, None, scale=scale, qk_l2norm=qk_l2norm)
        kw = {"chunk_size": chunk_size} if kind == "chunked" else {}
        out, S = kernel(q, k, v, beta, g, lam, start=start, S0=S0, **kw)
        return out, RecurrentState(start + q.shape[2], S=S)

    form.__name__ = kind
    return form


def _weights(q, k, v, *, causal, mask, scale, beta=None, g=None, lam=None, chunk_size=64, qk_l2norm=True):
    """``M * Lambda`` of a sequence from position 0: the gated delta rule's pair weights
    ``M_ts = beta_s q_t^T A_t ... A_{s+1} k_s`` times the level weights ``lam[t, l(t, s)]``."""
    if not causal:
        raise ValueError("log-linear Gated DeltaNet is a causal recurrence; pass causal=True")
    check_inputs(q, k, v, beta, g, "scalar", chunk_size)
    level_state(q, v, lam, None, chunk_size)
    pos = torch.arange(q.shape[2], device=q.device)
    return delta_rule_weights(q, k, beta, g, scale=scale, qk_l2norm=qk_l2norm) * pair_weights(lam, pos)


def _inputs(q, k, v, generator):
    return {**example_inputs("scalar")(q, k, v, generator), "lam": example_level_weights(q, generator)}


def _flops(batch, heads, q_len, kv_len, head_dim, causal, chunk_size=64):
    """Chunked form, per token: ``C D`` each for K K^T, Q K^T, T e^b K, P W, the values and K_end^T T,
    ``C^2`` each for the UT solve and P T, ``D^2`` each for the chunk transition, the writes and the
    read of every level, and the passing of every level through the transition once per chunk."""
    c, d, levels = chunk_size, head_dim, levels_for(q_len)
    return 2 * batch * heads * q_len * (6 * c * d + 2 * c * c + (levels + 2) * d * d + levels * d * d * d // c)


_FORMS = {kind: _make(kind) for kind in KERNELS}

register_stateful_mechanism(
    "log_linear_gated_deltanet",
    weights=_weights,
    forms=_FORMS,
    family="delta-rule",
    papers=(PAPER, GATED_DELTANET),
    patterns=CAUSAL_ONLY,
    params={"chunk_size": Param(64, int, 'tokens per chunk of the chunked form (a power of two)', low=1),
            "qk_l2norm": Param(True, bool, 'l2-normalise q and k per head, as the paper does')},
    tensor_inputs=_inputs,
    inputs={"beta": TensorInput("(B, H, N)", "writing strengths in (0, 1)"),
            "g": TensorInput("(B, H, N)", "per-token log forget gates <= 0"), "lam": TensorInput("(B, H, N, levels)", "non-negative weight of each Fenwick level per token")},
    tensor_inputs_per_token=("beta", "g", "lam"),
    flops=_flops,
    state_size=level_state_size,
    complexity="O(N log N)",
    summary="Fenwick-tree levels of the gated delta rule, one weighted state per level (O(log N) states)",
    test_params={"chunk_size": 8},
)
