"""A sequence no longer than one chunk: the chunked scan does the parallel form's work, no more.

Training a small model at short lengths (MQAR at 64 tokens, chunk size 128) used to pad the
sequence to a whole chunk and multiply every query by the zero state before it, forward and
backward: three times the parallel form's work for the same numbers.
"""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from attnkit.kernels import linear_scan


def _inputs(gate, N, D=8, B=2, H=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.rand(B, H, N, D, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(B, H, N, D + 1, generator=g, dtype=torch.float64, requires_grad=True)
    shape = {None: None, "scalar": (B, H, N), "channel": (B, H, N, D)}[gate]
    log_gate = None if shape is None else -torch.rand(*shape, generator=g, dtype=torch.float64)
    return q, k, v, log_gate


def _training_flops(form, *args, **kw) -> int:
    with FlopCounterMode(display=False) as count:
        out, _ = form(*args, causal=True, **kw)  # the final state unused, as in a training step
        out.sum().backward()
    return count.get_total_flops()


@pytest.mark.parametrize("gate", [None, "scalar"])
@pytest.mark.parametrize("N", [5, 16])
def test_one_chunk_costs_no_more_than_the_parallel_form(gate, N):
    q, k, v, g = _inputs(gate, N)
    chunked = _training_flops(linear_scan.chunked, q, k, v, g, None, chunk_size=16)
    parallel = _training_flops(linear_scan.parallel, q, k, v, g, None)
    assert chunked <= parallel


@pytest.mark.parametrize("gate", [None, "scalar", "channel"])
@pytest.mark.parametrize("S0", [False, True])
def test_one_chunk_equals_the_parallel_form(gate, S0):
    q, k, v, g = _inputs(gate, N=7)
    state = torch.randn(2, 2, 8, 9, dtype=torch.float64, requires_grad=True) if S0 else None
    out, S = linear_scan.chunked(q, k, v, g, state, causal=True, chunk_size=16)
    ref, S_ref = linear_scan.parallel(q, k, v, g, state, causal=True)
    assert torch.allclose(out, ref, atol=1e-10) and torch.allclose(S, S_ref, atol=1e-10)
    leaves = [t for t in (q, k, v, state) if t is not None]
    grads = torch.autograd.grad(out.sum() + S.sum(), leaves)
    for a, b in zip(grads, torch.autograd.grad(ref.sum() + S_ref.sum(), leaves)):
        assert torch.allclose(a, b, atol=1e-9)
