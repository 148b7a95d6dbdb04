"""Aaren: the prefix scan, the RNN and the materialised softmax are one function."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.nn.aaren import AarenLayer, prefix_attention_reference, prefix_attention_scan, prefix_attention_step


@pytest.mark.parametrize("N", [1, 7, 37])
def test_scan_and_rnn_equal_the_materialised_softmax(N):
    g = torch.Generator().manual_seed(N)
    scores = 5 * torch.randn(2, 3, N, generator=g, dtype=torch.float64)
    v = torch.randn(2, 3, N, 4, generator=g, dtype=torch.float64)
    ref = prefix_attention_reference(scores, v)
    torch.testing.assert_close(prefix_attention_scan(scores, v), ref)
    cut = (N + 1) // 2  # the RNN from a carried state: two pieces (one when N = 1)
    a, state = prefix_attention_step(scores[..., :cut], v[..., :cut, :], None)
    if cut < N:
        b, _ = prefix_attention_step(scores[..., cut:], v[..., cut:, :], state)
        a = torch.cat([a, b], dim=-2)
    torch.testing.assert_close(a, ref)


def test_prefix_attention_is_causal_softmax_with_a_constant_query():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 1, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 11, 8, generator=g, dtype=torch.float64) for _ in range(2))
    expected = attnkit.attention(q.expand(1, 2, 11, 8), k, v, "softmax", causal=True, scale=1.0)
    torch.testing.assert_close(prefix_attention_scan((q * k).sum(-1), v), expected)


def test_layer_forms_and_incremental_agree():
    torch.manual_seed(0)
    layer = AarenLayer(8, heads=2).double()
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    ref = layer(x, form="reference")
    torch.testing.assert_close(layer(x), ref)
    y1, state = layer(x[:, :6], return_state=True)
    y2, _ = layer(x[:, 6:], state=state, return_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), ref)
    ref.sum().backward()
    assert layer.query.grad is not None
    with pytest.raises(ValueError, match="form"):
        layer(x, form="parallel")
