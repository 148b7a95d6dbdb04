"""Wrong tensor inputs and params of the linear mechanisms are refused, naming the argument."""
from __future__ import annotations

import pytest
import torch

import attnkit

q = k = v = torch.randn(1, 2, 6, 8)


@pytest.mark.parametrize(
    "name,kwargs,error,match",
    [
        ("gla", {"gk": torch.zeros(1, 2, 5, 8)}, ValueError, "gk"),
        ("gla", {"gk": [0.0]}, TypeError, "gk"),
        ("gla", {"gk": torch.zeros(1, 2, 6, 8, dtype=torch.float64)}, TypeError, "gk"),
        ("mamba2", {"dt": torch.ones(1, 2, 6), "A": -torch.ones(3)}, ValueError, "A"),
        ("mamba2", {"dt": torch.ones(1, 2, 6, 1), "A": -torch.ones(2)}, ValueError, "dt"),
        ("performer", {"features": torch.randn(16, 4)}, ValueError, "features"),
        ("flatten", {"focus_scale": torch.ones(8)}, ValueError, "focus_scale"),
        ("flatten", {"focusing_factor": 0}, ValueError, "focusing_factor"),
        ("lightning", {"decay_scale": -1.0}, ValueError, "decay_scale"),
        ("lln", {"alpha": float("nan")}, ValueError, "alpha"),
        ("linear", {"chunk_size": 0}, ValueError, "chunk_size"),
        ("agent", {"agents": 0}, ValueError, "agents"),
        ("nystromformer", {"landmarks": -2}, ValueError, "landmarks"),
    ],
)
def test_bad_input_is_refused(name, kwargs, error, match):
    causal = "causal-self" in attnkit.spec(name).patterns
    with pytest.raises(error, match=match):
        attnkit.attention(q, k, v, name, causal=causal, **kwargs)


def test_masks_are_refused_by_recurrent_mechanisms():
    with pytest.raises(ValueError, match="mask"):
        attnkit.attention(q, k, v, "retention", causal=True, mask=torch.ones(6, 6, dtype=torch.bool))
