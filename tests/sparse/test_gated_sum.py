"""The gated sum of NSA's branches against autograd of the plain expression, and the chunked row dot, in float64."""
from __future__ import annotations

import pytest
import torch

from attnkit.kernels.gated_sum import gated_sum
from attnkit.kernels.row_terms import row_dot


def _inputs(gates_grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    gates = torch.rand(2, 3, 11, 3, generator=g, dtype=torch.float64).requires_grad_(gates_grad)
    branches = [torch.randn(2, 3, 11, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    return gates, branches


@pytest.mark.parametrize("gates_grad", [True, False])
def test_output_and_gradients_equal_the_plain_gated_sum(gates_grad):
    gates, branches = _inputs(gates_grad)
    leaves = [t for t in (gates, *branches) if t.requires_grad]
    d_out = torch.randn(2, 3, 11, 5, dtype=torch.float64)
    plain = sum(gates[..., c : c + 1] * b for c, b in enumerate(branches))
    fused = gated_sum(gates, *branches)
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    expected = torch.autograd.grad(plain, leaves, d_out)
    got = torch.autograd.grad(fused, leaves, d_out)
    for e, x in zip(expected, got):
        torch.testing.assert_close(x, e, rtol=1e-12, atol=1e-12)


def test_gradcheck():
    gates, branches = _inputs()
    assert torch.autograd.gradcheck(gated_sum, (gates, *branches))


def test_a_gate_count_unlike_the_branch_count_is_an_error():
    gates, branches = _inputs()
    with pytest.raises(ValueError, match="gates"):
        gated_sum(gates, *branches[:2])
    with pytest.raises(ValueError, match="gates"):
        gated_sum(gates, branches[0], branches[1], branches[2][:, :, :5])


@pytest.mark.parametrize("rows", [1, 7, 4096])
def test_row_dot_equals_the_plain_row_sum_of_products(rows):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 50, 9, generator=g, dtype=torch.float64)
    b = torch.randn(3, 50, 9, generator=g, dtype=torch.float64)
    assert torch.equal(row_dot(a[:, :, :8], b[:, :, 1:], rows=rows), (a[:, :, :8] * b[:, :, 1:]).sum(-1))

