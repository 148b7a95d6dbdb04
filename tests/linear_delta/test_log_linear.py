"""Log-linear attention: equal level weights give back the linear-time recurrence it extends."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.families.log_linear import levels_for
from attnkit.nn.inputs import input_module


@pytest.mark.parametrize("form", ["reference", "chunked", "recurrent"])
def test_equal_level_weights_are_mamba2(form):
    g = torch.Generator().manual_seed(0)
    B, H, N, D = 1, 2, 21, 8
    q, k, v = (torch.randn(B, H, N, D, generator=g, dtype=torch.float64) for _ in range(3))
    dt = torch.rand(B, H, N, generator=g, dtype=torch.float64)
    A = -torch.rand(H, generator=g, dtype=torch.float64)
    lam = torch.ones(B, H, N, levels_for(N), dtype=torch.float64)
    out = attnkit.attention(q, k * dt[..., None], v, "log_linear_mamba2", causal=True, scale=1.0,
                            g=dt * A[:, None], lam=lam, chunk_size=4, form=form)
    expected = attnkit.attention(q, k, v, "mamba2", causal=True, scale=1.0, dt=dt, A=A)
    torch.testing.assert_close(out, expected)


def test_level_weights_select_fenwick_buckets():
    # Only level 2 weighted. Query 6 = 0b110 has bit 1 set, so its level-2 bucket is the two
    # tokens before its aligned pair {6, 7}: tokens 4 and 5.
    N, D = 8, 4
    q = torch.ones(1, 1, N, D, dtype=torch.float64)
    k = torch.ones(1, 1, N, D, dtype=torch.float64) / D
    v = torch.eye(N, dtype=torch.float64)[None, None]
    lam = torch.zeros(1, 1, N, levels_for(N), dtype=torch.float64)
    lam[..., 2] = 1
    out = attnkit.attention(q, k, v, "log_linear_mamba2", causal=True, scale=1.0,
                            g=torch.zeros(1, 1, N, dtype=torch.float64), lam=lam)
    assert out[0, 0, 6].nonzero().flatten().tolist() == [4, 5]
    assert out[0, 0, 5].nonzero().flatten().tolist() == []  # 5 = 0b101: bit 1 clear, no level-2 bucket


def test_module_computes_inputs():
    layer = input_module("log_linear_mamba2", dim=16, heads=2, kv_heads=2, head_dim=8)
    q = torch.randn(1, 2, 9, 8)
    inputs = layer(torch.randn(1, 9, 16), q, q, q)
    assert (inputs["g"] <= 0).all() and (inputs["lam"] >= 0).all()
    attnkit.attention(q, q, q, "log_linear_mamba2", causal=True, **inputs).sum().backward()
    assert layer.lam.proj.weight.grad is not None and layer.lam.scale.grad is not None
