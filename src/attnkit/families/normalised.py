"""Normalised attention without the probability simplex.

Richter & Wattenhofer, "Normalized Attention Without Probability Cage" (2020):
the softmax is replaced by a normalisation of each row of scores,
``w_ij = gain_h * (s_ij - mean_i) / sqrt(var_i + eps) + shift_h``, with the mean
and variance over the keys the query may attend to. Weights can be negative
and need not sum to one, so outputs leave the convex hull of the values. The
authors' code initialises the per-head ``gain`` to 1 and ``shift`` to 0 (the
defaults here when they are ``None``).

Runs in one pass through the chunked kernel: the normaliser's "standardise"
kind merges per-chunk means and centred sums (see
:mod:`attnkit.scores.normalisers`).
"""
from __future__ import annotations

import torch

from ..params import Param, TensorInput
from ..scores.normalisers import Normaliser
from ..validation import check_float, check_tensor
from ..builders.score_pipeline import register_score_mechanism


def _normaliser(*, gain=None, shift=None, eps, **_):
    return Normaliser("standardise", "standardise", gain=gain, shift=shift, eps=eps)


def _check(q, k, v, *, gain=None, shift=None, eps, **_):
    check_float("eps", eps, positive=True)
    check_tensor("gain", gain, (q.shape[1],), q, optional=True)
    check_tensor("shift", shift, (q.shape[1],), q, optional=True)


def _inputs(q, k, v, g):
    H = q.shape[1]
    return {
        "gain": 1.0 + 0.1 * torch.randn(H, generator=g, dtype=q.dtype),
        "shift": 0.1 * torch.randn(H, generator=g, dtype=q.dtype),
    }


register_score_mechanism(
    "normalised",
    papers=("Normalized Attention Without Probability Cage",),
    normaliser=_normaliser,
    params={"eps": Param(1e-06, float, 'added to the variance', low=0, low_open=True)},
    inputs={"gain": TensorInput("(H,)", "gains of the standardised scores; 1 when absent", required=False),
            "shift": TensorInput("(H,)", "shifts of the standardised scores; 0 when absent", required=False)},
    tensor_inputs=_inputs,
    check_inputs=_check,
    summary="weights = gain * standardised scores + shift (no probability simplex)",
)
