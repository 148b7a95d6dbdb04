"""GLA: linear attention with a data-dependent diagonal (per key channel) forget gate.

Yang et al., "Gated Linear Attention Transformers with Hardware-Efficient
Training" (2024):

    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t,   o_t = q_t S_t

with ``alpha_t = sigmoid(x_t W_1 W_2 + b)^(1/tau)`` in ``(0, 1)^{Dk}`` computed by
the layer. attnkit takes ``gk = log(alpha)`` as a per-token tensor input of
shape ``(B, H, N, Dk)`` (``attnkit.nn.inputs.linear.GLAGate`` computes it).
The chunked form is the paper's two-level chunkwise algorithm
(:mod:`attnkit.kernels.gla_chunked`): the state across chunks of ``chunk_size``,
matmuls in a log-space-safe factorisation across the sub-chunks of a chunk, and
exact per-channel gate products inside each sub-chunk. ``scale`` scales the scores.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..params import Param, TensorInput
from ..kernels.gla_chunked import gla_chunked
from ..validation import check_tensor
from ..builders.linear_pipeline import register_linear_mechanism
from ..builders.stateful import CAUSAL_ONLY

PAPER = "Gated Linear Attention Transformers with Hardware-Efficient Training"


def gla_features(q, k, v, *, scale, gk):
    B, H, N, D = q.shape
    check_tensor("gk", gk, (B, H, N, D), q, what="(batch, heads, seq, head_dim) log forget gates")
    return q * scale, k, v, gk


def gla_inputs(q, k, v, generator):
    B, H, N, D = q.shape
    x = torch.randn(B, H, N, D, generator=generator, dtype=torch.float64)
    return {"gk": F.logsigmoid(x).to(q.dtype) * 0.5}


register_linear_mechanism(
    "gla",
    family="linear-decay",
    papers=(PAPER,),
    prepare=gla_features,
    normalise=False,
    params={"chunk_size": Param(32, int, "tokens per chunk of the chunked form", low=1)},
    tensor_inputs=gla_inputs,
    inputs={"gk": TensorInput("(B, H, N, Dk)", "per-token, per-channel log forget gates <= 0 (log-sigmoid of the gate projection)")},
    tensor_inputs_per_token=("gk",),
    patterns=CAUSAL_ONLY,
    summary="GLA: S = diag(alpha_t) S + k^T v with data-dependent per-channel gates gk = log(alpha)",
    chunked_kernel=gla_chunked,
)
