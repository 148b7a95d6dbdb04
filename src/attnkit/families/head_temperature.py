"""Per-head softmax temperatures: NoPE's length generalisation by tuning one number per head.

Wang et al., "Length Generalization of Causal Transformers without Position Encoding" (2024):
a NoPE model's attention spreads out ("distracts") past the training length; scaling each
head's scores by its own temperature restores it, and a search over those temperatures (one
parameter per head, the rest frozen) extends the usable context::

    out_i = softmax_j(lambda_h * scale * q_i . k_j) v_j

``temperature`` ``(H,)`` holds ``lambda_h > 0`` (``1`` is softmax attention). It scales the
query, so SDPA, the chunked kernel and the KV-cache step all run it exactly.
"""
from __future__ import annotations

import torch

from ..builders.score_pipeline import register_score_mechanism
from ..kernels.dense import sdpa_attention
from ..params import TensorInput
from ..validation import check_tensor

PAPER = "Length Generalization of Causal Transformers without Position Encoding"


def _prepare(q, k, v, *, temperature=None, **_):
    check_tensor("temperature", temperature, (q.shape[1],), q, what="(heads,) softmax temperatures > 0")
    return q * temperature[:, None, None], k, v


def _sdpa(q, k, v, *, causal, mask, scale, q_chunk=None, kv_chunk=None, temperature=None):
    q, k, v = _prepare(q, k, v, temperature=temperature)
    return sdpa_attention(q, k, v, causal=causal, mask=mask, scale=scale)


def _inputs(q, k, v, g):
    return {"temperature": torch.exp(0.3 * torch.randn(q.shape[1], generator=g, dtype=torch.float64)).to(q.dtype)}


register_score_mechanism(
    "head_temperature",
    papers=(PAPER,),
    prepare=_prepare,
    inputs={"temperature": TensorInput("(H,)", "per-head temperature lambda_h > 0 multiplying the scores")},
    tensor_inputs=_inputs,
    extra_fast={"sdpa": _sdpa},
    summary="softmax with one learned or searched temperature per head (NoPE length generalisation)",
)
