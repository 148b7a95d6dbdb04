"""Every fast form of every registered mechanism against its float64 reference,
forward and gradients, over the four patterns and the awkward sizes."""
from __future__ import annotations

import pytest

from attnkit.registry import get

from .harness import assert_close_to_reference, cases, grad_inputs, gradients, make_inputs, run, sizes_for

import torch


@pytest.mark.parametrize("name,form,pattern", cases("forms"))
def test_forward_matches_reference(name, form, pattern):
    spec = get(name)
    causal = pattern.startswith("causal")
    for seed, size in enumerate(sizes_for(pattern, spec)):
        q, k, v, extra = make_inputs(spec, size, seed=seed)
        ref64 = run(spec, "reference", q, k, v, extra, causal=causal)
        q32, k32, v32, extra32 = make_inputs(spec, size, dtype=torch.float32, seed=seed)
        ref32 = run(spec, "reference", q32, k32, v32, extra32, causal=causal)
        fast32 = run(spec, form, q32, k32, v32, extra32, causal=causal)
        assert fast32.shape == ref64.shape, f"{name}/{form} {size}: shape {tuple(fast32.shape)} != {tuple(ref64.shape)}"
        assert fast32.dtype == torch.float32
        assert_close_to_reference(fast32, ref32, ref64, f"{name}/{form} {pattern} {size}")


@pytest.mark.parametrize("name,form,pattern", cases("forms"))
def test_gradients_match_reference(name, form, pattern):
    spec = get(name)
    causal = pattern.startswith("causal")
    sizes = sizes_for(pattern, spec)
    for seed, size in enumerate(sizes[1:3] or sizes):
        q, k, v, extra = make_inputs(spec, size, seed=seed)
        ref64 = gradients(spec, "reference", grad_inputs(q, k, v, extra), causal=causal)
        q32, k32, v32, extra32 = make_inputs(spec, size, dtype=torch.float32, seed=seed)
        ref32 = gradients(spec, "reference", grad_inputs(q32, k32, v32, extra32), causal=causal)
        fast32 = gradients(spec, form, grad_inputs(q32, k32, v32, extra32), causal=causal)
        for leaf in ref64:
            assert_close_to_reference(fast32[leaf], ref32[leaf], ref64[leaf], f"d{leaf} {name}/{form} {pattern} {size}")
