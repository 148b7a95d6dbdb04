"""Property-based checks over every registered mechanism (hypothesis, few examples, no deadline).

- random valid shapes (GQA, Nq != Nk for cross patterns), masks and forms agree with the float64
  reference (the fast form also runs in float64, so the tolerance is tight);
- random invalid parameter values, drawn from each declaration's type and range, raise a
  ``TypeError``/``ValueError`` naming the parameter;
- objects that are not states, passed as ``state=``, are refused naming ``state``.
"""
from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnkit
from attnkit.registry import PATTERNS, get

from .harness import all_names, make_inputs

FAST = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NAMES = all_names()


@st.composite
def calls(draw):
    name = draw(st.sampled_from(NAMES))
    spec = get(name)
    pattern = draw(st.sampled_from([p for p in PATTERNS if p in spec.patterns]))
    kv_heads = draw(st.sampled_from([1, 2]))
    heads = kv_heads * draw(st.sampled_from([1, 2]))
    d = draw(st.sampled_from([8, 16]))
    nq = draw(st.integers(1, 20))
    nk = draw(st.integers(1, 20).filter(lambda n: n != nq)) if pattern.endswith("cross") else nq
    size = (draw(st.integers(1, 2)), heads, kv_heads, nq, nk, d)
    form = draw(st.sampled_from(list(spec.fast)))
    masked = spec.supports_mask and draw(st.booleans())
    return name, pattern, size, form, masked, draw(st.integers(0, 2**16))


@FAST
@given(calls())
def test_random_valid_calls_match_the_float64_reference(call):
    name, pattern, size, form, masked, seed = call
    spec = get(name)
    q, k, v, extra = make_inputs(spec, size, seed=seed)
    mask = None
    if masked:
        g = torch.Generator().manual_seed(seed)
        mask = torch.rand(size[0], 1, size[3], size[4], generator=g) < 0.7
    kw = dict(causal=pattern.startswith("causal"), mask=mask, **extra, **spec.test_params)
    expected = attnkit.attention(q, k, v, name, form="reference", **kw)
    try:
        got = attnkit.attention(q, k, v, name, form=form, **kw)
    except ValueError as e:  # a form that declares it cannot run this call (e.g. Nq != Nk) must say so
        assert f"form={form!r} of mechanism {name!r} cannot run this call" in str(e) and "'reference'" in str(e)
        return
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-8, msg=lambda m: f"{name}/{form} {pattern} {size}: {m}")


def _bad_values(declared):
    """A strategy of values the declaration refuses."""
    kind = declared.item if declared.type is tuple else declared.type
    wrong_type = st.sampled_from([object(), "text", [object()]])
    options = [wrong_type]
    if kind is int:
        options.append(st.floats(allow_nan=True).filter(lambda x: not float(x).is_integer() if math.isfinite(x) else True))
        if declared.low is not None:
            options.append(st.integers(max_value=int(declared.low) - (0 if declared.low_open else 1)))
        if declared.high is not None:
            options.append(st.integers(min_value=int(declared.high) + 1))
    elif kind is float:
        options.append(st.sampled_from([math.nan, math.inf, -math.inf]))
        if declared.low is not None:
            below = st.floats(max_value=declared.low, allow_nan=False, allow_infinity=False)
            options.append(below.filter(lambda x: x < declared.low or (declared.low_open and x == declared.low)))
        if declared.high is not None:
            above = st.floats(min_value=declared.high, allow_nan=False, allow_infinity=False)
            options.append(above.filter(lambda x: x > declared.high or (declared.high_open and x == declared.high)))
    elif kind is str and declared.choices:
        options.append(st.text(max_size=8).filter(lambda s: s not in declared.choices))
    values = st.one_of(*options)
    return st.tuples(values) if declared.type is tuple and not declared.scalar_ok else values


PARAMS = [(n, p) for n in NAMES for p in get(n).params]


@FAST
@given(st.sampled_from(PARAMS).flatmap(lambda np_: st.tuples(st.just(np_), _bad_values(get(np_[0]).params[np_[1]]))))
def test_random_invalid_parameter_values_are_refused_by_name(case):
    (name, param), bad = case
    spec = get(name)
    pattern = next(p for p in PATTERNS if p in spec.patterns)
    q, k, v, extra = make_inputs(spec, (1, 2, 2, 4, 4 if pattern.endswith("self") else 6, 8),
                                 dtype=torch.float32)
    with pytest.raises((TypeError, ValueError), match=re.escape(param)):
        attnkit.attention(q, k, v, name, causal=pattern.startswith("causal"), **extra, **{**spec.test_params, param: bad})


@FAST
@given(st.sampled_from([n for n in NAMES if get(n).step is not None]),
       st.one_of(st.integers(), st.text(max_size=4), st.just(torch.zeros(2)), st.just(object()), st.floats()))
def test_objects_that_are_not_states_are_refused_by_name(name, bad_state):
    spec = get(name)
    q, k, v, extra = make_inputs(spec, (1, 2, 2, 3, 3, 8), dtype=torch.float32)
    with pytest.raises((TypeError, ValueError), match="state"):
        attnkit.attention(q, k, v, name, causal=True, state=bad_state, **extra, **spec.test_params)
