"""A wrong state= is refused naming `state` and what was expected, for every incremental mechanism:
another mechanism's state, something that is no state, another dtype, another batch; and a recurrence
refuses incremental calls with fewer queries than keys by name. A returned state holds tensors of its call's dtype
only, which lets a state continued with inputs of that dtype skip the walk over its tensors."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.registry import get
from attnkit.state import tensors_of

from .harness import cases, make_inputs


def _state(name, size=(1, 2, 2, 4, 4, 16), dtype=torch.float64):
    spec = get(name)
    q, k, v, extra = make_inputs(spec, size, dtype=dtype)
    return attnkit.attention(q, k, v, name, causal=True, return_state=True, **spec.test_params, **extra)[1]


@pytest.mark.parametrize("name", [n for n in cases("names") if get(n).step is not None])
def test_a_wrong_state_is_refused_naming_state(name):
    spec = get(name)
    q, k, v, extra = make_inputs(spec, (1, 2, 2, 3, 3, 16), seed=1)
    other = "deltanet" if name != "deltanet" else "softmax"
    wrong = {f"a state of {other}": _state(other), "a string": "state", "a float32 state": _state(name, dtype=torch.float32),
             "a state of batch 2": _state(name, size=(2, 2, 2, 4, 4, 16))}
    for what, state in wrong.items():
        with pytest.raises((ValueError, TypeError)) as caught:
            attnkit.attention(q, k, v, name, causal=True, state=state, **spec.test_params, **extra)
        message = str(caught.value)
        assert "state" in message and "initial_state" not in message, f"{name}, {what}: {message}"
        if what.startswith("a state of "):
            assert other in message or what == "a state of batch 2", f"{name}, {what}: {message}"
    if getattr(spec.step, "one_query_per_key", False):
        with pytest.raises(ValueError, match="one query per new key"):
            attnkit.attention(q[:, :, :2], k, v, name, causal=True, state=_state(name), **spec.test_params, **extra)


@pytest.mark.parametrize("name", [n for n in cases("names") if get(n).step is not None])
def test_a_returned_state_holds_tensors_of_its_calls_dtype(name):
    for dtype in (torch.float32, torch.float64):
        kinds = {(t.dtype, t.device) for t in tensors_of(_state(name, dtype=dtype)) if t.is_floating_point()}
        assert kinds == {(dtype, torch.device("cpu"))}, f"{name} in {dtype}: state holds {kinds}"
