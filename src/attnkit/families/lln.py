"""Linear log-normal (LLN) attention.

Nahshan, Kampeas & Haleva, "Linear Log-Normal Attention with Unbiased
Concentration" (2024). Softmax attention's weights are log-normal; LLN keeps
that with exponential feature maps of separate temperatures,

    phi_q(x) = exp(alpha x),   phi_k(x) = exp(beta x)

(normalised linear attention on them), and chooses ``alpha, beta`` by moment
matching: ``sigma~^2 = (sigma_q^2 sigma_k^2 - b) / (2 a)`` with the paper's
fitted ``a = 0.14855, b = -0.35487``, ``alpha = sigma~ / sigma_q``,
``beta = sigma~ / sigma_k`` (:func:`moment_matched_temperatures`; the defaults
are its values for unit-variance q and k). The temperatures are scalar params
so that causal and incremental use stay exact. ``scale`` multiplies q first
(``scale=1.0`` is the paper's form). LLN+Diag (averaged with block-diagonal
softmax attention) is ``lln_diag``.
"""
from __future__ import annotations

import math

import torch

from ..params import Param
from ..builders.linear_pipeline import register_linear_mechanism
from ..validation import check_float

PAPER = "Linear Log-Normal Attention with Unbiased Concentration"
FIT_A, FIT_B = 0.14855178144710912, -0.35487039130661086


def moment_matched_temperatures(sigma_q: float, sigma_k: float) -> tuple[float, float]:
    """The paper's ``(alpha, beta)`` for queries and keys of standard deviations ``sigma_q, sigma_k``."""
    if sigma_q <= 0 or sigma_k <= 0:
        raise ValueError(f"sigma_q and sigma_k must be > 0, got {sigma_q}, {sigma_k}")
    sigma = math.sqrt((sigma_q**2 * sigma_k**2 - FIT_B) / (2 * FIT_A))
    return sigma / sigma_q, sigma / sigma_k


DEFAULT_ALPHA, DEFAULT_BETA = moment_matched_temperatures(1.0, 1.0)


def lln_prepare(q, k, v, *, scale, alpha, beta):
    for name, t in (("alpha", alpha), ("beta", beta)):
        check_float(name, t, finite=True)
    return torch.exp(alpha * scale * q), torch.exp(beta * k), v, None


PARAMS = {
    "alpha": Param(DEFAULT_ALPHA, float, "query temperature of exp(alpha q)", low=0, low_open=True),
    "beta": Param(DEFAULT_BETA, float, "key temperature of exp(beta k)", low=0, low_open=True),
}

SPEC = register_linear_mechanism(
    "lln",
    family="linear",
    papers=(PAPER,),
    prepare=lln_prepare,
    normalise=True,
    rowwise=True,
    params=PARAMS,
    test_params={"alpha": 0.7, "beta": 0.8},
    summary="linear log-normal attention: exp(alpha q), exp(beta k) feature maps with moment-matched temperatures",
)
