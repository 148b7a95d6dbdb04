"""Mamba-2's scalar-gated state space model (SSD) as an attention mechanism.

Dao & Gu, "Transformers are SSMs: Generalized Models and Efficient Algorithms
Through Structured State Space Duality" (2024): with ``C = q``, ``B = k``,
``x = v``,

    h_t = exp(dt_t A) h_{t-1} + dt_t B_t^T x_t,   y_t = C_t h_t

equal to masked attention ``(C B^T * L) x`` with ``L_ts = exp(A (dt_{s+1} +
... + dt_t)) dt_s`` (the SSD duality) and computed chunkwise. Tensor inputs:
``dt`` ``(B, H, N)`` positive step sizes (per token) and ``A`` ``(H,)`` negative
decay rates; ``attnkit.nn.inputs.linear.Mamba2Gate`` computes them. ``scale``
multiplies ``C`` (``scale=1.0`` is the paper's form); the conv1d, the skip
``D x`` and the gated output norm are in the block, ``attnkit.nn.Mamba2Layer``.
Used as a baseline for the gated mechanisms.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..params import TensorInput
from ..validation import check_tensor
from ..builders.linear_pipeline import register_linear_mechanism
from ..builders.stateful import CAUSAL_ONLY

PAPER = "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State Space Duality"


def ssd_features(q, k, v, *, scale, dt, A):
    B, H, N, _ = q.shape
    check_tensor("dt", dt, (B, H, N), q, what="(batch, heads, seq) step sizes")
    check_tensor("A", A, (H,), q, what="(heads,) negative decay rates")
    return q * scale, k * dt[..., None], v, dt * A[None, :, None]


def ssd_inputs(q, k, v, generator):
    B, H, N, _ = q.shape
    dt = F.softplus(torch.randn(B, H, N, generator=generator, dtype=torch.float64) - 1.0)
    A = -torch.exp(0.5 * torch.randn(H, generator=generator, dtype=torch.float64))
    return {"dt": dt.to(q.dtype), "A": A.to(q.dtype)}


register_linear_mechanism(
    "mamba2",
    family="linear-decay",
    papers=(PAPER,),
    prepare=ssd_features,
    normalise=False,
    tensor_inputs=ssd_inputs,
    inputs={"dt": TensorInput("(B, H, N)", "per-token step sizes > 0 (softplus of the dt projection)"),
            "A": TensorInput("(H,)", "per-head decay rates < 0 (the decay is exp(dt * A))")},
    tensor_inputs_per_token=("dt",),
    patterns=CAUSAL_ONLY,
    summary="Mamba-2 SSD: h = exp(dt A) h + dt k^T v, o = q h (scalar data-dependent decay per head)",
)
