"""The chunked linear scan run in head slices equals the parallel form (output, final state, gradients)."""
import pytest
import torch

from attnkit import registry
from attnkit.kernels import linear_scan


@pytest.mark.parametrize("gate", [None, "scalar", "channel"])
def test_head_slices_equal_the_parallel_form(monkeypatch, gate):
    monkeypatch.setattr(linear_scan, "STEP_ELEMENTS", 1)  # one head and one chunk per step, across batch rows
    g = torch.Generator().manual_seed(5)
    B, H, N, D = 2, 3, 19, 4
    q, k = (torch.rand(B, H, N, D, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(B, H, N, D + 1, generator=g, dtype=torch.float64, requires_grad=True)
    shape = {None: None, "scalar": (B, H, N), "channel": (B, H, N, D)}[gate]
    log_gate = None if shape is None else -torch.rand(*shape, generator=g, dtype=torch.float64)
    S0 = torch.randn(B, H, D, D + 1, generator=g, dtype=torch.float64, requires_grad=True)
    out, S = linear_scan.chunked(q, k, v, log_gate, S0, causal=True, chunk_size=4)
    ref, S_ref = linear_scan.parallel(q, k, v, log_gate, S0, causal=True)
    assert torch.allclose(out, ref, atol=1e-10) and torch.allclose(S, S_ref, atol=1e-10)
    leaves = (q, k, v, S0)
    for a, b in zip(torch.autograd.grad(out.sum() + S.sum(), leaves), torch.autograd.grad(ref.sum() + S_ref.sum(), leaves)):
        assert torch.allclose(a, b, atol=1e-9)


@pytest.mark.parametrize("name", ["linear", "based", "lln"])
def test_rowwise_feature_maps_per_slice_equal_the_parallel_form(monkeypatch, name):
    """Mechanisms whose feature map acts on each row map and normalise slice by slice: same outputs,
    state and gradients as the parallel form, from an initial state handed over by an earlier call."""
    monkeypatch.setattr(linear_scan, "STEP_ELEMENTS", 1)
    spec = registry.get(name)
    forms = spec.stateful_forms
    params = {key: value for key, value in spec.defaults.items() if key != "chunk_size"}
    g = torch.Generator().manual_seed(6)
    B, H, N, D = 2, 3, 19, 4
    q, k, v = (torch.randn(B, H, N, D, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    prefix = [torch.randn(B, H, 5, D, generator=g, dtype=torch.float64) for _ in range(3)]
    _, state = forms["parallel"](*prefix, causal=True, scale=0.5, **params)
    out, S = forms["chunked"](q, k, v, causal=True, scale=0.5, initial_state=state, chunk_size=4, **params)
    ref, S_ref = forms["parallel"](q, k, v, causal=True, scale=0.5, initial_state=state, **params)
    assert S.length == S_ref.length == 5 + N
    assert torch.allclose(out, ref, atol=1e-10)
    for key in ("S", "z"):
        assert torch.allclose(S[key], S_ref[key], atol=1e-10)
    grads = torch.autograd.grad(out.square().sum() + S["S"].sum(), (q, k, v))
    grads_ref = torch.autograd.grad(ref.square().sum() + S_ref["S"].sum(), (q, k, v))
    for a, b in zip(grads, grads_ref):
        assert torch.allclose(a, b, atol=1e-9)
