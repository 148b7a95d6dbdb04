"""Retention: linear attention with a fixed per-head exponential decay.

Sun et al., "Retentive Network: A Successor to Transformer for Large Language
Models" (2023):

    S_n = gamma S_{n-1} + k_n^T v_n,   o_n = q_n S_n,   gamma_h = 1 - 2^(-5-h)

equal to the parallel form ``(Q K^T * D) V`` with ``D_nm = gamma^(n-m)`` for
``n >= m`` and to the chunkwise form (within-chunk matrix + cross-chunk state).
``scale`` scales the scores (RetNet scales keys by ``d^-1/2``, attnkit's
default). xPos rotation is a positional encoding (``position=``); the GroupNorm
and swish gate are in the paper's layer, ``attnkit.nn.MultiScaleRetention``.
"""
from __future__ import annotations

import torch

from ..builders.linear_pipeline import register_linear_mechanism
from ..builders.stateful import CAUSAL_ONLY

PAPER = "Retentive Network: A Successor to Transformer for Large Language Models"


def retention_log_decay(heads: int, device=None) -> torch.Tensor:
    """``log(gamma_h)`` with ``gamma_h = 1 - 2^(-5-h)``, h = 0 .. heads-1."""
    return torch.log1p(-(2.0 ** (-5.0 - torch.arange(heads, dtype=torch.float64, device=device))))


def retention_features(q, k, v, *, scale):
    B, H, N, _ = q.shape
    g = retention_log_decay(H, q.device).to(q.dtype)[None, :, None].expand(B, H, N)
    return q * scale, k, v, g


register_linear_mechanism(
    "retention",
    family="linear-decay",
    papers=(PAPER,),
    prepare=retention_features,
    normalise=False,
    patterns=CAUSAL_ONLY,
    summary="RetNet: S = gamma_h S + k^T v, o = q S, fixed per-head decay gamma_h = 1 - 2^(-5-h)",
)
