"""RAT at its two extremes (the paper's point: the chunk size interpolates RNN and attention)."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.nn.inputs import input_module


def _inputs(N=11):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, N, 8, generator=g, dtype=torch.float64) for _ in range(3))
    gate = torch.sigmoid(torch.randn(2, 2, N, 8, generator=g, dtype=torch.float64))
    return q, k, v, gate


@pytest.mark.parametrize("form", ["reference", "chunked", "recurrent"])
def test_chunk_of_one_token_is_softmax_attention(form):
    q, k, v, gate = _inputs()
    out = attnkit.attention(q, k, v, "rat", causal=True, g=gate, chunk_size=1, form=form)
    expected = attnkit.attention(q, (1 - gate) * k, (1 - gate) * v, "softmax", causal=True)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("form", ["reference", "chunked", "recurrent"])
def test_one_chunk_is_the_recurrence(form):
    q, k, v, gate = _inputs()
    out = attnkit.attention(q, k, v, "rat", causal=True, g=gate, chunk_size=64, form=form)
    state = torch.zeros_like(v[:, :, 0])
    for t in range(v.shape[2]):
        state = gate[:, :, t] * state + (1 - gate[:, :, t]) * v[:, :, t]
        torch.testing.assert_close(out[:, :, t], state)


def test_module_computes_gates():
    layer = input_module("rat", dim=32, heads=4, kv_heads=2, head_dim=8)
    q, k, v = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    inputs = layer(torch.randn(1, 6, 32), q, k, v)
    assert inputs["g"].shape == (1, 4, 6, 8) and ((inputs["g"] > 0) & (inputs["g"] < 1)).all()
    attnkit.attention(q, k, v, "rat", causal=True, **inputs).sum().backward()
    assert layer.proj.weight.grad is not None
