"""Every declared parameter of every mechanism refuses wrong types and out-of-range values by name.

The bad values come from the declaration itself (:meth:`attnkit.params.Param.bad_values`):
a wrong type, None where it is not optional, NaN and infinities for floats,
values just outside ``low``/``high``, a string outside ``choices``, an empty
tuple. Each must raise ``TypeError``/``ValueError`` naming the parameter,
before any work is done.
"""
from __future__ import annotations

import re

import pytest
import torch

import attnkit
from attnkit.params import Param
from attnkit.registry import get

from .harness import cases, make_inputs


def _call_args(spec):
    pattern = next(p for p in ("causal-self", "noncausal-self", "causal-cross", "noncausal-cross")
                   if p in spec.patterns)
    size = (1, 2, 2, 8, 8, 16) if pattern.endswith("self") else (1, 2, 2, 8, 12, 16)
    q, k, v, extra = make_inputs(spec, size, dtype=torch.float32)
    return q, k, v, pattern.startswith("causal"), extra


PARAM_CASES = [(name, p) for name in cases("names") for p in get(name).params]


@pytest.mark.parametrize("name, param", PARAM_CASES)
def test_bad_parameter_values_are_refused_by_name(name, param):
    spec = get(name)
    q, k, v, causal, extra = _call_args(spec)
    declared = spec.params[param]
    for bad in declared.bad_values():
        kw = {**extra, **spec.test_params, param: bad}
        with pytest.raises((TypeError, ValueError), match=re.escape(param)):
            attnkit.attention(q, k, v, name, causal=causal, **kw)


@pytest.mark.parametrize("name", cases("names"))
def test_declarations_are_complete(name):
    """Each parameter says what it means; each number has a range; test values are allowed."""
    spec = get(name)
    for param, declared in spec.params.items():
        assert isinstance(declared, Param), f"{name}.{param} is not declared with attnkit.params.Param"
        assert declared.doc, f"{name}.{param} has no doc"
        kind = declared.item if declared.type is tuple else declared.type
        if kind in (int, float):
            assert declared.low is not None or declared.high is not None, f"{name}.{param} declares no range"
    q, k, v, causal, extra = _call_args(spec)
    attnkit.attention(q, k, v, name, causal=causal, **extra, **spec.test_params)


def test_the_chunked_form_refuses_a_negative_chunk():
    q = torch.randn(1, 2, 8, 16)
    for name in ("softmax", "alibi", "softcap", "t5"):
        spec = attnkit.spec(name)
        inputs = spec.tensor_inputs(q, q, q, torch.Generator().manual_seed(0)) if spec.tensor_inputs else {}
        with pytest.raises(ValueError, match="kv_chunk"):
            attnkit.attention(q, q, q, name, causal=True, form="chunked", kv_chunk=-1, **inputs)
    with pytest.raises(ValueError, match="block"):
        attnkit.attention(q, q, q, "block_causal_document", block=-1, doc_ids=torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="block"):
        attnkit.attention(q, q, q, "block_causal_document", block=1.5, doc_ids=torch.zeros(1, 8, dtype=torch.long))
    for param in ("alpha", "beta"):
        with pytest.raises(ValueError, match=param):
            attnkit.attention(q, q, q, "lln", causal=True, **{param: -1.0})
