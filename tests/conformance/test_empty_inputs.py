"""Calls with nothing to attend, for every mechanism and form: an empty batch, zero heads or no tokens
give an empty output of shape (B, H, Nq, Dv); queries with no keys are fully masked rows, so zeros."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.registry import get

from .harness import cases, make_inputs

EMPTY = {  # slices of (batch, q heads, kv heads, tokens)
    "batch 0": (slice(0, 0), slice(None), slice(None), slice(None)),
    "zero heads": (slice(None), slice(0, 0), slice(0, 0), slice(None)),
    "no tokens": (slice(None), slice(None), slice(None), slice(0, 0)),
}


def _call(spec, form, q, k, v, extra, causal):
    return attnkit.attention(q, k, v, spec.name, causal=causal, form=form, **spec.test_params, **extra)


@pytest.mark.parametrize("name", cases("names"))
def test_empty_calls_give_empty_or_zero_outputs_of_the_right_shape(name):
    spec = get(name)
    causal = "causal-self" in spec.patterns
    q, k, v, extra = make_inputs(spec, (2, 4, 2, 8, 8, 16))
    for form in ("reference", *spec.fast):
        for what, (b, h, hkv, n) in EMPTY.items():
            kv_n = n if what == "no tokens" else slice(None)
            q0 = q[b, h, n if what == "no tokens" else slice(None)].requires_grad_()
            k0, v0 = k[b, hkv, kv_n], v[b, hkv, kv_n]
            tokens = {x: (t[:, :, :0] if what == "no tokens" and x in spec.tensor_inputs_per_token else t)
                      for x, t in extra.items()}
            out = _call(spec, form, q0, k0, v0, tokens, causal)
            assert out.shape == (*q0.shape[:3], v.shape[-1]), f"{name}/{form} {what}: shape {tuple(out.shape)}"
            out.sum().backward()  # still part of the graph
        cross = [p for p in ("noncausal-cross", "causal-cross") if p in spec.patterns]
        if cross:
            out = _call(spec, form, q[:, :, :3], k[:, :, :0], v[:, :, :0], extra, cross[0] == "causal-cross")
            assert out.shape == (2, 4, 3, v.shape[-1]) and (out == 0).all(), f"{name}/{form}: no keys must give zeros"


@pytest.mark.parametrize("name", [n for n in cases("names") if get(n).step is not None])
def test_an_incremental_call_with_no_tokens_returns_its_state(name):
    spec = get(name)
    q, k, v, extra = make_inputs(spec, (1, 2, 2, 4, 4, 16))
    _, state = attnkit.attention(q, k, v, name, causal=True, return_state=True, **spec.test_params, **extra)
    tokens = {x: (t[:, :, :0] if x in spec.tensor_inputs_per_token else t) for x, t in extra.items()}
    out, same = attnkit.attention(q[:, :, :0], k[:, :, :0], v[:, :, :0], name, causal=True, state=state,
                                  return_state=True, **spec.test_params, **tokens)
    assert out.shape == (1, 2, 0, v.shape[-1]) and same is state
    with pytest.raises(ValueError, match="no tokens"):
        attnkit.attention(q[:, :, :0], k[:, :, :0], v[:, :, :0], name, causal=True, return_state=True,
                          **spec.test_params, **tokens)
