"""Cog attention: signed attention weights.

Lv et al., "More Expressive Attention with Negative Weights" (2024):
``w_ij = sign(s_ij) * exp(|s_ij|) / sum_j exp(|s_ij|)`` with ``s = q k^T * scale``,
so one head can copy (positive), erase (negative) or ignore (near zero) a
token. The normaliser is the softmax of ``|s|``, so the chunked kernel keeps
its running maximum on ``|s|`` and multiplies by the sign when accumulating.
"""
from __future__ import annotations

from ..scores.normalisers import Normaliser
from ..builders.score_pipeline import register_score_mechanism

COG = Normaliser("cog", "exp", signed=True)

register_score_mechanism(
    "cog",
    papers=("More Expressive Attention with Negative Weights",),
    normaliser=COG,
    summary="sign(s) * softmax(|s|): signed weights",
)
