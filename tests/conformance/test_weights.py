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


def _read_steps():
    """Mechanisms whose incremental step reads stored keys (a KV cache or a window) and that have weights."""
    return [n for n in cases("names") if getattr(get(n).step, "read", None) is not None
            and "causal-self" in get(n).patterns and (get(n).weights is not None or not get(n).weights_note)]


@pytest.mark.parametrize("name", _read_steps())
def test_incremental_calls_record_the_one_shot_rows(name):
    """Captured pieces of a sequence, put together by ``rec.sequence()``, are the one-shot weights: each
    call's rows over the keys it read, at their positions, and ``weights @ values read`` its output."""
    spec = get(name)
    N = 21
    q, k, v, extra = make_inputs(spec, (1, 4, 2, N, N, 16), seed=3)
    _, whole = attnkit.attention(q, k, v, name, causal=True, form="reference", return_weights=True,
                                 **spec.test_params, **extra)
    state, outs = None, []
    with attnkit.capture() as rec:
        for a, b in [(0, 6), (6, 7), (7, 15), (15, 16), (16, N)]:
            piece = {n: (x[:, :, a:b] if n in spec.tensor_inputs_per_token else x) for n, x in extra.items()}
            out, state = attnkit.attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], name, causal=True, state=state,
                                           return_state=True, **spec.test_params, **piece)
            outs.append(out)
    assert [r.weights.shape[2] for r in rec] == [6, 1, 8, 1, 5]
    err = max_err(rec.sequence(), whole)
    assert err < 1e-9, f"{name}: incremental rows differ from the one-shot weights by {err:.3e}"
    if spec.weights_output is not None:
        return  # an output normalisation follows the mixing (the one-shot test checks weights_output)
    rebuilt = torch.cat([r.rows(N) for r in rec], dim=2) @ repeat_kv(v, q.shape[1])
    assert max_err(rebuilt, torch.cat(outs, dim=2)) < 1e-9, f"{name}: recorded rows do not give the outputs"
