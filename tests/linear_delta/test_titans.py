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


def _pushed_regime(N=128):
    """The regime a trained MAG layer reached before diverging: correlated keys, values of norm 12,
    the step at its bound, momentum 0.96, little forgetting."""
    g = torch.Generator().manual_seed(0)
    B, H, D = 2, 2, 16
    k = torch.randn(B, H, 1, D, generator=g, dtype=torch.float64) + 0.3 * torch.randn(B, H, N, D, generator=g, dtype=torch.float64)
    v = 12 * torch.nn.functional.normalize(torch.randn(B, H, N, D, generator=g, dtype=torch.float64), dim=-1)
    q = torch.randn(B, H, N, D, generator=g, dtype=torch.float64)
    ones = torch.ones(B, H, N, dtype=torch.float64)
    w1 = torch.randn(H, D, D, generator=g, dtype=torch.float64) / D**0.5
    w2 = torch.randn(H, D, D, generator=g, dtype=torch.float64) / D**0.5
    return q, k, v, {"theta": 0.0098 * ones, "eta": 0.96 * ones, "alpha": 0.08 * ones, "w1": w1, "w2": w2}


def test_the_surprise_bound_keeps_a_pushed_memory_finite():
    q, k, v, inputs = _pushed_regime(256)
    unbounded = attnkit.attention(q, k, v, "titans", causal=True, **inputs)
    bounded = attnkit.attention(q, k, v, "titans", causal=True, max_grad_norm=2.0, **inputs)
    assert unbounded[..., -64:, :].abs().nan_to_num(float("inf")).amin(dim=-1).max() > 1e100  # diverged
    assert bounded.isfinite().all() and bounded.abs().max() < 1


@pytest.mark.parametrize("form", ["chunked", "recurrent"])
def test_bounded_forms_equal_the_reference_with_gradients(form):
    # The chunked and recurrent forms clamp through the outer-product factors, the reference
    # clamps autograd's per-token gradient matrices by their norms: both must agree.
    q, k, v, inputs = _pushed_regime(21)
    tensors = [t.clone().requires_grad_() for t in (q, k, v, inputs["theta"], inputs["w1"])]

    def run(f):
        qq, kk, vv, th, w1 = tensors
        out = attnkit.attention(qq, kk, vv, "titans", causal=True, form=f, chunk_size=8, max_grad_norm=0.5,
                                **{**inputs, "theta": th, "w1": w1})
        return out, torch.autograd.grad(out.square().sum(), tensors)

    (want, want_grads), (got, got_grads) = run("reference"), run(form)
    assert (got - want).abs().max() < 1e-10
    for a, b in zip(got_grads, want_grads):
        assert (a - b).abs().max() < 1e-8 * (1 + b.abs().max())
    free = attnkit.attention(q, k, v, "titans", causal=True, form=form, chunk_size=8, **inputs)
    assert (free - got).abs().max() > 1e-3  # the bound was active


def test_the_architectures_check_the_bound():
    from attnkit.models import ModelConfig
    with pytest.raises(ValueError, match="max_grad_norm"):
        ModelConfig(schedule="T", mixers={"T": {"titans": "mag", "max_grad_norm": -1.0}})
    assert ModelConfig(schedule="T", mixers={"T": {"titans": "mal", "max_grad_norm": "none"}}) is not None
