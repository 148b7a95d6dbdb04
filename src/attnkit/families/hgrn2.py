"""HGRN-2: a gated linear RNN whose hidden state is expanded by an outer product.

Qin et al., "HGRN2: Gated Linear RNNs with State Expansion" (2024). Per head, with the
forget gate ``f_t`` in ``(lower_bound, 1)^{Dk}`` (lower_bound: the layer's lower bound on
forgetting), input ``i_t`` and output gate ``o_t``::

    f_t = lower_bound + (1 - lower_bound) * sigmoid(k_t)
    S_t = diag(f_t) S_{t-1} + (1 - f_t)^T i_t          (state expansion: an outer product)
    y_t = o_t S_t

HGRN (the first version) holds a vector state ``h_t = f_t * h_{t-1} + (1 - f_t) * i_t``;
HGRN-2 replaces the element-wise product with the outer product, so the state grows to
``Dk x Dv`` with no new parameters: the input gate is tied to the forget gate (``1 - f``).
In attnkit's terms ``q`` is the output gate ``o`` (times ``scale``), ``k`` the forget gate's
pre-activation and ``v`` the input ``i``: a GLA recurrence with keys ``1 - f`` and log-decay
``log f``, run by GLA's chunked algorithm. The layer needs nothing else, so
``attnkit.nn.Attention(mechanism="hgrn2")`` learns it through its q, k, v projections.
Causal self-attention only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..builders.linear_pipeline import register_linear_mechanism
from ..builders.stateful import CAUSAL_ONLY
from ..params import Param
from ..kernels.gla_chunked import gla_chunked

PAPER = "HGRN2: Gated Linear RNNs with State Expansion"


def hgrn2_features(q, k, v, *, scale, lower_bound=0.0):
    """``(o * scale, 1 - f, i, log f)`` with ``f = lower_bound + (1 - lower_bound) sigmoid(k)``."""
    if lower_bound == 0.0:
        log_f = F.logsigmoid(k)
    else:
        log_f = torch.logaddexp(torch.full_like(k, math.log(lower_bound)),
                                math.log1p(-lower_bound) + F.logsigmoid(k))
    return q * scale, (1 - lower_bound) * torch.sigmoid(-k), v, log_f


register_linear_mechanism(
    "hgrn2",
    family="linear-decay",
    papers=(PAPER,),
    prepare=hgrn2_features,
    normalise=False,
    params={"chunk_size": Param(32, int, "tokens per chunk of the chunked form", low=1),
            "lower_bound": Param(0.0, float, "lower bound of the forget gate (the paper raises it with depth)",
                                 low=0, high=1, high_open=True)},
    patterns=CAUSAL_ONLY,
    summary="HGRN-2: S = diag(f) S + (1 - f)^T v with f = lb + (1 - lb) sigmoid(k), o = q S",
    test_params={"lower_bound": 0.25},
    chunked_kernel=gla_chunked,
)
