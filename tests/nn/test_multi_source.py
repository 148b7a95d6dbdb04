"""Multi-source cross-attention: serial, parallel, flat, hierarchical."""
from __future__ import annotations

import pytest
import torch

from attnkit.nn import MultiSourceCrossAttention

G = torch.Generator().manual_seed(0)
X = torch.randn(2, 5, 16, dtype=torch.float64, generator=G)
S1 = torch.randn(2, 7, 12, dtype=torch.float64, generator=G)
S2 = torch.randn(2, 3, 8, dtype=torch.float64, generator=G)


def _layer(strategy, dims=(12, 8)):
    torch.manual_seed(0)
    return MultiSourceCrossAttention(16, 4, dims, strategy=strategy).double()


def test_parallel_is_the_sum_and_serial_feeds_each_source_the_previous_state():
    par = _layer("parallel")
    a, b = par.sources
    torch.testing.assert_close(par(X, [S1, S2]), a(X, S1) + b(X, S2))
    ser = _layer("serial")
    a, b = ser.sources
    h1 = X + a(X, S1)
    torch.testing.assert_close(ser(X, [S1, S2]), h1 + b(h1, S2) - X)


@pytest.mark.parametrize("strategy", ["serial", "parallel", "flat"])
def test_one_source_is_plain_cross_attention(strategy):
    layer = _layer(strategy, dims=(12,))
    torch.testing.assert_close(layer(X, [S1]), layer.sources[0](X, S1))


def test_flat_is_one_softmax_over_all_sources_with_per_source_projections():
    flat = _layer("flat", dims=(12, 12))
    a, b = flat.sources
    S1b = torch.randn(2, 4, 12, dtype=torch.float64)
    b.k_proj.load_state_dict(a.k_proj.state_dict())
    b.v_proj.load_state_dict(a.v_proj.state_dict())
    # with shared K/V projections, flat attention = attention over the concatenated sources
    torch.testing.assert_close(flat(X, [S1, S1b]), a(X, torch.cat([S1, S1b], 1)))
    pad = torch.ones(2, 4, dtype=torch.bool)
    pad[:, 2:] = False
    torch.testing.assert_close(flat(X, [S1, S1b], masks=[None, pad]), a(X, torch.cat([S1, S1b[:, :2]], 1)))


def test_hierarchical_weights_are_a_convex_combination_of_source_contexts():
    hier = _layer("hierarchical", dims=(12, 12))
    a, b = hier.sources
    b.load_state_dict(a.state_dict())
    c = a(X, S1)  # both sources give the same context, so any softmax over them returns W_V c W_O
    comb = hier.combine
    want = comb.out_proj(comb.v_proj(c))
    torch.testing.assert_close(hier(X, [S1, S1]), want)
    out = _layer("hierarchical")(X, [S1, S2])
    out.sum().backward()
    assert out.shape == X.shape


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="strategy"):
        MultiSourceCrossAttention(16, 4, [12], strategy="mean")
    layer = _layer("flat")
    with pytest.raises(ValueError, match="expected 2 sources"):
        layer(X, [S1])
    with pytest.raises(ValueError, match=r"sources\[1\]"):
        layer(X, [S1, S1])
    with pytest.raises(ValueError, match=r"masks\[0\]"):
        layer(X, [S1, S2], masks=[torch.ones(2, 3, dtype=torch.bool), None])
