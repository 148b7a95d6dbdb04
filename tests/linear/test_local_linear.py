"""Local Linear Attention: the intercept of the paper's weighted ridge regression, solved directly."""
from __future__ import annotations

import pytest
import torch

import attnkit


def _qkv(N, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 2, N, D, generator=g, dtype=torch.float64) for _ in range(3)]


def _regression_intercept(q, k, v, ridge, scale):
    """Per query: minimise sum_j w_ij ||v_j - b - W (k_j - q_i)||^2 + ridge * omega_i ||W||^2 over (b, W)."""
    out = torch.zeros_like(q)
    D = q.shape[-1]
    for h in range(q.shape[1]):
        for i in range(q.shape[2]):
            keys, values = k[0, h, : i + 1], v[0, h, : i + 1]
            w = torch.exp(scale * keys @ q[0, h, i])  # the unnormalised kernel, as in the authors' code
            Z = torch.cat([torch.ones(i + 1, 1, dtype=q.dtype), keys - q[0, h, i]], dim=1)
            penalty = torch.zeros(D + 1, D + 1, dtype=q.dtype)
            penalty[1:, 1:] = ridge * w.sum() * torch.eye(D, dtype=q.dtype)
            theta = torch.linalg.solve(Z.T @ (w[:, None] * Z) + penalty, Z.T @ (w[:, None] * values))
            out[0, h, i] = theta[0]
    return out


@pytest.mark.parametrize("form", ["reference", "blockwise"])
def test_output_is_the_local_linear_intercept(form):
    q, k, v = _qkv(11)
    expected = _regression_intercept(q, k, v, ridge=0.3, scale=0.5)
    got = attnkit.attention(q, k, v, "local_linear", causal=True, form=form, ridge=0.3, q_block=4, kv_block=3)
    torch.testing.assert_close(got, expected)


def test_large_ridge_is_softmax_attention_and_small_ridge_is_not():
    q, k, v = _qkv(9, seed=1)
    softmax = attnkit.attention(q, k, v, "softmax", causal=True)
    far = attnkit.attention(q, k, v, "local_linear", causal=True, ridge=1e8)
    near = attnkit.attention(q, k, v, "local_linear", causal=True, ridge=0.1)
    torch.testing.assert_close(far, softmax, rtol=0, atol=1e-6)
    assert (near - softmax).abs().max() > 1e-2


def test_exact_on_locally_linear_data():
    """With v an affine function of k (and no ridge pull), LLA recovers f(q) exactly; softmax does not."""
    q, k, _ = _qkv(16, D=3, seed=2)
    A = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0], [2.0, 0.0, 1.0]], dtype=torch.float64)
    f = lambda x: x @ A.T + 0.7  # noqa: E731
    v = f(k)
    lla = attnkit.attention(q, k, v, "local_linear", causal=False, ridge=1e-9)
    torch.testing.assert_close(lla, f(q))
    assert (attnkit.attention(q, k, v, "softmax", causal=False) - f(q)).abs().max() > 1e-1


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), "1"])
def test_ridge_must_be_positive(bad):
    q, k, v = _qkv(3)
    with pytest.raises((ValueError, TypeError), match="ridge"):
        attnkit.attention(q, k, v, "local_linear", ridge=bad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_run_with_their_solve_in_float32(dtype):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 12, 8, generator=g) for _ in range(3))
    expected = attnkit.attention(q, k, v, "local_linear", causal=True)
    for form in attnkit.spec("local_linear").forms:
        if form == "incremental":
            continue
        out = attnkit.attention(q.to(dtype), k.to(dtype), v.to(dtype), "local_linear", causal=True, form=form)
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert (out.float() - expected).abs().max() < 0.1
