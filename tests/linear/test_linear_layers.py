"""The gate/feature layers of the linear mechanisms produce inputs the mechanisms accept, and learn."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.nn.inputs import input_module

LAYERED = ["gla", "mamba2", "flatten", "performer"]


@pytest.mark.parametrize("name", LAYERED)
def test_layer_inputs_drive_the_mechanism_and_get_gradients(name):
    torch.manual_seed(0)
    B, N, dim, H, D = 2, 9, 32, 4, 8
    module = input_module(name, dim=dim, heads=H, kv_heads=H, head_dim=D)
    x = torch.randn(B, N, dim)
    q, k, v = (torch.randn(B, H, N, D) for _ in range(3))
    inputs = module(x, q, k, v)
    whole = attnkit.attention(q, k, v, name, causal=True, **inputs)
    # the same inputs computed for two pieces continue the sequence exactly
    a = module(x[:, :4], q[:, :, :4], k[:, :, :4], v[:, :, :4])
    b = module(x[:, 4:], q[:, :, 4:], k[:, :, 4:], v[:, :, 4:])
    out_a, state = attnkit.attention(q[:, :, :4], k[:, :, :4], v[:, :, :4], name, causal=True, return_state=True, **a)
    out_b, _ = attnkit.attention(q[:, :, 4:], k[:, :, 4:], v[:, :, 4:], name, causal=True, state=state,
                                 return_state=True, **b)
    torch.testing.assert_close(torch.cat([out_a, out_b], dim=2), whole, rtol=1e-5, atol=1e-5)
    learned = [p for p in module.parameters() if p.requires_grad]
    if not learned:  # performer: its features are a buffer, redrawn rather than learned
        return
    whole.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learned), f"{name}: a parameter gets no gradient"


def test_performer_redraw_changes_features_and_output():
    module = input_module("performer", dim=16, heads=2, kv_heads=2, head_dim=8)
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    before = attnkit.attention(q, k, v, "performer", **module(None, q, k, v))
    module.redraw(seed=1)
    after = attnkit.attention(q, k, v, "performer", **module(None, q, k, v))
    assert (before - after).abs().max() > 1e-4
