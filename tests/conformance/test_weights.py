"""Every mechanism's attention weights (``spec.weights``) against its float64 reference.

A spec that declares no weights and no ``weights_note`` (why it has none) gets the weights
of its reference's one materialised softmax, which must give the output. Where ``weights @ v``
is the output it must equal the reference output; where the spec says it is not (``weights_output`` and ``weights_note``: a normalisation or gate after the
mixing), ``weights_output(weights, ...)`` must. Rows of normalised mechanisms sum to one.
"""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.kernels.positions import repeat_kv
from attnkit.registry import get

from .harness import cases, make_inputs, max_err, sizes_for


def _with_weights():
    return [(n, p) for n, p in cases("patterns") if get(n).weights is not None or not get(n).weights_note]


@pytest.mark.parametrize("name,pattern", _with_weights())
def test_weights_give_the_reference_output(name, pattern):
    spec = get(name)
    causal = pattern.startswith("causal")
    size = sizes_for(pattern, spec)[1]
    q, k, v, extra = make_inputs(spec, size)
    out, weights = attnkit.attention(q, k, v, name, causal=causal, form="reference", return_weights=True,
                                     **spec.test_params, **extra)
    assert weights.shape == (*q.shape[:3], k.shape[2]) and weights.dtype == torch.float64
    if spec.weights_output is None:
        rebuilt = weights @ repeat_kv(v, q.shape[1])
    else:
        rebuilt = spec.weights_output(weights, q, k, v, **{**spec.defaults, **spec.test_params, **extra})
    assert max_err(rebuilt, out) < 1e-9, f"{name} {pattern}: weights do not give the output"
    if causal and q.shape[2] == k.shape[2]:
        assert weights.triu(1).abs().max() == 0, f"{name}: causal weights on future keys"
