"""Linear attention with the elu+1 feature map.

Katharopoulos et al., "Transformers are RNNs: Fast Autoregressive Transformers
with Linear Attention" (2020): replace ``exp(q . k)`` by ``phi(q) . phi(k)``
with ``phi(x) = elu(x) + 1``; then

    out_i = phi(q_i) S_i / phi(q_i) z_i,   S_i = sum_j phi(k_j)^T v_j,  z_i = sum_j phi(k_j)

(``j <= i`` when causal), an RNN with a ``Dk x (Dv + 1)`` state. attnkit's
``scale`` multiplies ``q`` before the map (``scale=1.0`` is the paper's form).
"""
from __future__ import annotations

import torch.nn.functional as F

from ..params import Param
from ..builders.linear_pipeline import register_linear_mechanism

PAPER = "Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention"


def elu_features(q, k, v, *, scale):
    return F.elu(q * scale).add_(1), F.elu(k).add_(1), v, None  # in place: no second N x D buffer


register_linear_mechanism(
    "linear",
    family="linear",
    papers=(PAPER,),
    prepare=elu_features,
    normalise=True,
    rowwise=True,
    params={"chunk_size": Param(128, int, "tokens per chunk of the chunked form", low=1)},  # fastest on the 2-core CPU: fewer, larger GEMMs (docs/linear.md)
    summary="phi(q) (sum phi(k)^T v) / phi(q) sum phi(k), phi = elu + 1; O(N), constant-size state",
)
