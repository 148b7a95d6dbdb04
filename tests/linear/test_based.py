"""Based's Taylor feature map: phi(q) . phi(k) = 1 + s + s^2 / 2 to float64 precision."""
from __future__ import annotations

import torch

from attnkit.families.based import taylor_features


def test_taylor_features_are_exact_in_float64():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 50, 16, generator=g, dtype=torch.float64)
    s = q @ k.T
    err = (taylor_features(q) @ taylor_features(k).T - (1 + s + s * s / 2)).abs().max().item()
    assert err < 1e-12  # a weight 1/sqrt(2) built in float32 leaves ~1e-7 relative error on the s^2 terms
