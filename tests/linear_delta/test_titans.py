"""Titans memory: the gradient step really learns the association it is shown."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.nn.inputs import TitansInputs, input_module


@pytest.mark.parametrize("form", ["reference", "chunked", "recurrent"])
def test_repeated_writes_make_the_memory_recall_the_value(form):
    # Writing the same (k, v) pair again and again with no forgetting drives M(k) to v (the loss
    # ||M(k) - v||^2 is minimised by the steps); reading with q = k then returns v.
    g = torch.Generator().manual_seed(0)
    B, H, N, D = 1, 1, 60, 8
    key = torch.nn.functional.normalize(torch.randn(D, generator=g, dtype=torch.float64), dim=0)
    k = key.expand(B, H, N, D)
    v = (0.5 * torch.randn(D, generator=g, dtype=torch.float64)).expand(B, H, N, D)
    ones = torch.ones(B, H, N, dtype=torch.float64)
    w1 = torch.randn(H, D, 16, generator=g, dtype=torch.float64) / D**0.5
    w2 = torch.randn(H, 16, D, generator=g, dtype=torch.float64) / 4
    out = attnkit.attention(k, k, v, "titans", causal=True, scale=1.0, theta=0.2 * ones, eta=0.5 * ones,
                            alpha=0 * ones, w1=w1, w2=w2, chunk_size=4, form=form)
    first, last = (out[0, 0, 0] - v[0, 0, 0]).norm(), (out[0, 0, -1] - v[0, 0, 0]).norm()
    assert last < 0.02 * first


def test_module_computes_inputs():
    layer = input_module("titans", dim=16, heads=2, kv_heads=2, head_dim=8)
    q = torch.randn(1, 2, 9, 8)
    inputs = layer(torch.randn(1, 9, 16), q, q, q)
    for name in ("theta", "eta", "alpha"):
        assert inputs[name].shape == (1, 2, 9) and ((inputs[name] > 0) & (inputs[name] < 1)).all()
    attnkit.attention(q, q, q, "titans", causal=True, **inputs).sum().backward()
    assert layer.w1.grad is not None and layer.gates.weight.grad is not None


def test_an_untrained_layer_keeps_the_memory_finite_over_a_long_sequence():
    # With step sizes near 0.5 (plain sigmoids) the inner gradient steps diverged within a few
    # dozen tokens (outputs ~1e23 at 64 tokens); the bounded step keeps the read-out of order one.
    torch.manual_seed(0)
    layer = input_module("titans", dim=64, heads=4, kv_heads=4, head_dim=16)
    x = torch.randn(2, 256, 64)
    q, k, v = (torch.randn(2, 4, 256, 16) for _ in range(3))
    inputs = layer(x, q, k, v)
    assert inputs["theta"].max() <= 1e-2
    out = attnkit.attention(q, k, v, "titans", causal=True, **inputs)
    assert out.isfinite().all() and out.abs().max() < 10


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_the_step_bound_is_checked(bad):
    with pytest.raises(ValueError, match="max_step"):
        TitansInputs(dim=16, heads=2, head_dim=8, max_step=bad)
