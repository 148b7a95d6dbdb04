"""Aaren: with a constant query, every form is causal softmax attention; the layer runs through the mechanism."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.families.aaren.forms import combine
from attnkit.nn.aaren import AarenLayer


@pytest.mark.parametrize("form", ["reference", "chunked", "scan", "recurrent"])
def test_constant_query_gives_causal_softmax_attention(form):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 1, 8, generator=g, dtype=torch.float64).expand(1, 2, 23, 8)
    k, v = (3 * torch.randn(1, 2, 23, 8, generator=g, dtype=torch.float64) for _ in range(2))
    expected = attnkit.attention(q, k, v, "softmax", causal=True)
    got = attnkit.attention(q, k, v, "aaren", causal=True, form=form, chunk_size=5)
    torch.testing.assert_close(got, expected)


def test_combine_is_associative():
    g = torch.Generator().manual_seed(1)
    a, b, c = ((5 * torch.randn(3, generator=g, dtype=torch.float64), torch.rand(3, generator=g, dtype=torch.float64),
                torch.randn(3, 4, generator=g, dtype=torch.float64)) for _ in range(3))
    for x, y in zip(combine(combine(a, b), c), combine(a, combine(b, c))):
        torch.testing.assert_close(x, y)


def test_layer_forms_and_incremental_agree():
    torch.manual_seed(0)
    layer = AarenLayer(8, heads=2).double()
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    ref = layer(x, form="reference")
    for form in (None, "scan", "recurrent"):
        torch.testing.assert_close(layer(x, form=form), ref)
    y1, state = layer(x[:, :6], return_state=True)
    y2, state = layer(x[:, 6:], state=state, return_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), ref)
    assert state.length == 13 and state.numel() == 2 * 2 * (4 + 2)
    ref.sum().backward()
    assert layer.query.grad is not None and layer.query.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="form"):
        layer(x, form="parallel")
