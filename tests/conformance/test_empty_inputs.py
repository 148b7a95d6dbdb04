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


def _inputs_for(spec, q, k, v):
    """The mechanism's example tensor inputs for these (empty) q, k, v."""
    return spec.tensor_inputs(q.detach(), k, v, torch.Generator().manual_seed(0)) if spec.tensor_inputs else {}


def _empty_calls(spec):
    """(what, q, k, v) of each empty call the mechanism's patterns allow, with its causal flag."""
    causal = "causal-self" in spec.patterns
    q, k, v, _ = make_inputs(spec, (2, 4, 2, 8, 8, 16))
    for what, (b, h, hkv, n) in EMPTY.items():
        yield what, causal, q[b, h, n if what == "no tokens" else slice(None)], k[b, hkv, n], v[b, hkv, n]
    cross = [p for p in ("noncausal-cross", "causal-cross") if p in spec.patterns]
    if cross:
        yield "no keys", cross[0] == "causal-cross", q[:, :, :3], k[:, :, :0], v[:, :, :0]


@pytest.mark.parametrize("name", [n for n in cases("names") if get(n).inputs])
def test_badly_shaped_tensor_inputs_are_refused_even_when_there_is_nothing_to_compute(name):
    """No form runs on an empty call, so the declared shapes (TensorInput) are checked by the API itself."""
    spec = get(name)
    for what, causal, q, k, v in _empty_calls(spec):
        inputs = _inputs_for(spec, q, k, v)
        for input_name in (n for n in inputs if n in spec.inputs):
            bad = {**inputs, input_name: inputs[input_name].unsqueeze(0)}
            with pytest.raises(ValueError, match=f"{input_name} must have shape"):
                attnkit.attention(q, k, v, name, causal=causal, **spec.test_params, **bad)
            with pytest.raises(TypeError, match=input_name):
                attnkit.attention(q, k, v, name, causal=causal, **spec.test_params, **{**inputs, input_name: [1.0]})


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
            out = _call(spec, form, q0, k0, v0, _inputs_for(spec, q0, k0, v0), causal)
            assert out.shape == (*q0.shape[:3], v.shape[-1]), f"{name}/{form} {what}: shape {tuple(out.shape)}"
            out.sum().backward()  # still part of the graph
        cross = [p for p in ("noncausal-cross", "causal-cross") if p in spec.patterns]
        if cross:
            q0, k0, v0 = q[:, :, :3], k[:, :, :0], v[:, :, :0]
            out = _call(spec, form, q0, k0, v0, _inputs_for(spec, q0, k0, v0), cross[0] == "causal-cross")
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
