"""Delta-rule mechanisms: properties the papers state, and the layers computing their inputs."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.nn.inputs import input_module


def test_delta_rule_overwrites_the_value_stored_under_a_key():
    # With beta = 1 the delta rule replaces the value stored under k (DeltaNet, section 2):
    # writing (k, v1) then (k, v2) and reading with q = k returns v2, not v1 + v2.
    k = torch.nn.functional.normalize(torch.randn(1, 1, 1, 8, dtype=torch.float64), dim=-1).expand(1, 1, 2, 8)
    v = torch.randn(1, 1, 2, 8, dtype=torch.float64)
    beta = torch.ones(1, 1, 2, dtype=torch.float64)
    for form in ("reference", "chunked", "recurrent"):
        out = attnkit.attention(k, k, v, "deltanet", causal=True, scale=1.0, beta=beta, form=form)
        torch.testing.assert_close(out[0, 0, 1], v[0, 0, 1])


def test_gates_decay_the_state():
    # A log-gate of -50 at token 3 multiplies the past by e^-50: from there on the output is a fresh start.
    q, k, v = (torch.randn(1, 2, 6, 8, dtype=torch.float64) for _ in range(3))
    beta = torch.rand(1, 2, 6, dtype=torch.float64)
    g = torch.zeros(1, 2, 6, dtype=torch.float64)
    g[:, :, 3] = -50.0
    out = attnkit.attention(q, k, v, "gated_deltanet", causal=True, beta=beta, g=g)
    fresh = attnkit.attention(q[:, :, 3:], k[:, :, 3:], v[:, :, 3:], "gated_deltanet", causal=True,
                              beta=beta[:, :, 3:], g=g[:, :, 3:] * 0)
    torch.testing.assert_close(out[:, :, 3:], fresh)


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet", "kda"])
def test_module_computes_valid_inputs(name):
    spec = attnkit.spec(name)
    layer = input_module(spec.name, dim=32, heads=4, kv_heads=2, head_dim=16)
    x = torch.randn(2, 9, 32)
    q, k, v = torch.randn(2, 4, 9, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
    inputs = layer(x, q, k, v)
    assert set(inputs) == set(spec.tensor_names)
    assert ((inputs["beta"] > 0) & (inputs["beta"] < 1)).all()
    if "g" in inputs:
        assert (inputs["g"] <= 0).all()
    out = attnkit.attention(q, k, v, name, causal=True, **inputs)
    out.sum().backward()
    assert all(p.grad is not None for p in layer.parameters())


def test_missing_or_misshaped_inputs_are_named():
    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(TypeError, match=r"needs the tensor input\(s\) \['beta'\] \(beta: \(B, H, N\)"):
        attnkit.attention(q, q, q, "deltanet", causal=True)
    with pytest.raises(ValueError, match="g must have shape"):
        attnkit.attention(q, q, q, "kda", causal=True, beta=torch.rand(1, 2, 5), g=torch.zeros(1, 2, 5))


@pytest.mark.parametrize("gate", [None, "scalar", "channel"])
def test_chunked_form_in_blocks_equals_the_recurrence(monkeypatch, gate):
    """The sequence runs in blocks of whole chunks (``BLOCK_ELEMENTS``), the state handed on; the last
    block is shorter than a chunk, and every head of every batch row keeps its own state."""
    from attnkit.families.delta_rule import chunked as chunked_module
    from attnkit.families.delta_rule.forms import delta_rule_recurrent

    monkeypatch.setattr(chunked_module, "BLOCK_ELEMENTS", 1)  # one chunk per block
    g = torch.Generator().manual_seed(3)
    B, H, N, D = 2, 3, 21, 6
    q, k, v = (torch.randn(B, H, N, D, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    beta = torch.rand(B, H, N, generator=g, dtype=torch.float64)
    shape = {None: None, "scalar": (B, H, N), "channel": (B, H, N, D)}[gate]
    log_gate = None if shape is None else -torch.rand(*shape, generator=g, dtype=torch.float64)
    S0 = torch.randn(B, H, D, D, generator=g, dtype=torch.float64, requires_grad=True)
    out, S = chunked_module.delta_rule_chunked(q, k, v, beta, log_gate, scale=0.5, initial_state=S0, chunk_size=4)
    ref, S_ref = delta_rule_recurrent(q, k, v, beta, log_gate, scale=0.5, initial_state=S0)
    assert torch.allclose(out, ref, atol=1e-10) and torch.allclose(S, S_ref, atol=1e-10)
    grads = torch.autograd.grad((out.sum() + S.sum()), (q, k, v, S0))
    grads_ref = torch.autograd.grad((ref.sum() + S_ref.sum()), (q, k, v, S0))
    for a, b in zip(grads, grads_ref):
        assert torch.allclose(a, b, atol=1e-9)
