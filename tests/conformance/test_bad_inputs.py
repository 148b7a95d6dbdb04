"""Misuse fails loudly and early, for every registered mechanism; masked rows are zeros."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.registry import PATTERNS, get

from .harness import cases, make_inputs, run

SIZE = (2, 4, 2, 8, 8, 16)


def _pattern_for(spec):
    for p in ("causal-self", "noncausal-self", "causal-cross", "noncausal-cross"):
        if p in spec.patterns:
            return p


def test_bad_shapes_and_types_are_refused():
    """attention() checks q, k, v, the mask and the parameters before it looks up any form, so one
    mechanism shows it for all (the registry cannot bypass it: every call goes through api._checked)."""
    q, k, v = (torch.randn(2, 4, 8, 16) for _ in range(3))
    k, v = k[:, :2], v[:, :2]
    call = lambda q, k, v, **kw: attnkit.attention(q, k, v, "softmax", causal=True, **kw)  # noqa: E731
    call(q, k, v)  # the good call works
    with pytest.raises(ValueError, match="4 dimensions"):
        call(q[0], k, v)
    with pytest.raises(ValueError, match="batch"):
        call(q, k[:1], v[:1])
    with pytest.raises(ValueError, match="head_dim"):
        call(q, k[..., :8], v)
    with pytest.raises(ValueError, match="kv_heads"):
        call(q[:, :3], k, v)
    with pytest.raises(TypeError, match="dtype"):
        call(q, k.double(), v)
    with pytest.raises(TypeError, match="unexpected keyword"):
        call(q, k, v, no_such_parameter=1)
    with pytest.raises(ValueError, match="mask"):
        call(q, k, v, mask=torch.ones(3, 5, dtype=torch.bool))


@pytest.mark.parametrize("name", [n for n in cases("names") if set(get(n).patterns) != set(PATTERNS)])
def test_unsupported_patterns_are_refused(name):
    spec = get(name)
    pattern = _pattern_for(spec)
    size = SIZE if pattern.endswith("self") else (2, 4, 2, 8, 12, 16)
    q, k, v, extra = make_inputs(spec, size, dtype=torch.float32)
    for other in set(PATTERNS) - set(spec.patterns):
        oq, ok = (q, k) if other.endswith("cross") == pattern.endswith("cross") else _flip_cross(q, k, other)
        ov = ok if ok.shape[2] == k.shape[2] else torch.zeros_like(ok)
        with pytest.raises(ValueError, match="does not support"):
            attnkit.attention(oq, ok, ov, name, causal=other.startswith("causal"), **extra)


def test_a_mask_is_refused_by_mechanisms_without_one():
    names = [n for n in cases("names") if not get(n).supports_mask]
    assert names
    spec = get(names[0])
    pattern = _pattern_for(spec)
    q, k, v, extra = make_inputs(spec, SIZE, dtype=torch.float32)
    with pytest.raises(ValueError, match="does not take a mask"):
        attnkit.attention(q, k, v, spec.name, causal=pattern.startswith("causal"), mask=torch.ones(8, 8, dtype=torch.bool),
                          **extra)


def _flip_cross(q, k, other):
    if other.endswith("cross"):
        return q, torch.cat([k, k[:, :, :3]], dim=2)
    return q, k[:, :, : q.shape[2]]


@pytest.mark.parametrize("name", [n for n in cases("names") if get(n).supports_mask])
def test_fully_masked_row_is_zero_without_nan(name):
    spec = get(name)
    pattern = _pattern_for(spec)
    causal = pattern.startswith("causal")
    size = SIZE if pattern.endswith("self") else (2, 4, 2, 8, 12, 16)
    q, k, v, extra = make_inputs(spec, size, dtype=torch.float32)
    mask = torch.ones(size[3], size[4], dtype=torch.bool)
    mask[3] = False  # query 3 may attend to nothing
    for form in [None, "reference", *spec.fast]:
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = run(spec, form, *leaves, extra, causal=causal, mask=mask)
        assert not torch.isnan(out).any(), f"{name}/{form}: NaN in forward"
        assert out[:, :, 3].abs().max() == 0, f"{name}/{form}: fully masked row is not zero"
        out.sum().backward()
        for t in leaves:
            assert not torch.isnan(t.grad).any(), f"{name}/{form}: NaN in backward"


def test_unknown_mechanism_names_closest():
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="softmax"):
        attnkit.attention(q, q, q, "sofmax")


def test_a_position_that_is_not_an_encoding_is_refused_naming_position():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(TypeError, match="position must be a positional encoding"):
        attnkit.attention(q, q, q, "softmax", causal=True, position="rope")


def test_settings_checked_once_still_refuse_values_equal_to_accepted_ones():
    """attention() remembers settings that passed their checks; True == 1 == 1.0, so a remembered page=1 or
    scale=1 must not let page=True, page=1.0 or scale=True through."""
    q = k = v = torch.randn(1, 2, 8, 4)
    attnkit.attention(q, k, v, "quest", causal=True, scale=1, page=1, top_k=2)
    for bad in (True, 1.0):
        with pytest.raises(TypeError, match="page"):
            attnkit.attention(q, k, v, "quest", causal=True, scale=1, page=bad, top_k=2)
    with pytest.raises(TypeError, match="scale"):
        attnkit.attention(q, k, v, "quest", causal=True, scale=True, page=1, top_k=2)
