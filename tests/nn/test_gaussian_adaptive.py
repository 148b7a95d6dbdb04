"""GAAM: per head, weights from a product of learned Gaussians of the chunk's standardised values."""
import math

import pytest
import torch

from attnkit.nn import GaussianAdaptiveAttention


def test_matches_the_equations_entry_by_entry():
    torch.manual_seed(0)
    layer = GaussianAdaptiveAttention(2, 3, dim=1, dtype=torch.float64)
    with torch.no_grad():
        layer.mean_offsets.copy_(torch.randn(2, 3))
    x = torch.randn(2, 9, 4, dtype=torch.float64)  # heads get rows 0..3 and 4..8 of dim 1
    out, w = layer(x, return_weights=True)
    for b in range(2):
        for col in range(4):
            for h, rows in enumerate((range(0, 4), range(4, 9))):
                vals = [x[b, r, col].item() for r in rows]
                mu = sum(vals) / len(vals)
                s = math.sqrt(sum((u - mu) ** 2 for u in vals) / (len(vals) - 1) + 1e-8)
                p = []
                for u in vals:
                    prod = 1.0
                    for delta, c in zip(layer.mean_offsets[h].tolist(), layer.scales[h].tolist()):
                        prod *= math.exp(-((u - mu - delta) / s) ** 2 / (2 * c * c)) / math.sqrt(2 * math.pi * c * c)
                    p.append(prod)
                for r, pr in zip(rows, p):
                    assert w[b, r, col].item() == pytest.approx(pr / max(sum(p), 1e-8), rel=1e-9, abs=1e-12)
                    assert out[b, r, col].item() == pytest.approx(x[b, r, col].item() * pr / max(sum(p), 1e-8), rel=1e-9, abs=1e-12)


def test_weights_sum_to_one_per_head_and_ignore_shift_and_scale():
    """(They sum to one when the Gaussians' product sums to at least eps over the chunk, as here.)"""
    torch.manual_seed(1)
    layer = GaussianAdaptiveAttention(3, 2, dtype=torch.float64)
    x = torch.randn(2, 12, 5, dtype=torch.float64)
    _, w = layer(x, return_weights=True)
    torch.testing.assert_close(w.view(2, 3, 4, 5).sum(2), torch.ones(2, 3, 5, dtype=torch.float64))
    _, w2 = layer(3.0 * x - 7.0, return_weights=True)
    torch.testing.assert_close(w2, w)


def test_two_parameters_per_head_and_gaussian():
    assert sum(p.numel() for p in GaussianAdaptiveAttention(8, 4).parameters()) == 2 * 8 * 4


def test_bad_input_is_refused_by_name():
    layer = GaussianAdaptiveAttention(4)
    with pytest.raises(ValueError, match="at least 2 each"):
        layer(torch.randn(1, 7, 3))
    with pytest.raises(ValueError, match="dim=-2"):
        layer(torch.randn(5))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.randn(1, 8, 3, dtype=torch.float64))
