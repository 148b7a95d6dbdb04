"""GLA's two-level chunked kernel: every (chunk, sub-chunk) split is the same function, even with
gates that would overflow a factorisation relative to the chunk start (``exp(-b)``)."""
from __future__ import annotations

import pytest
import torch

from attnkit.kernels import gla_chunked as kernel
from attnkit.kernels import linear_scan
from attnkit.kernels.gla_chunked import gla_chunked


def _inputs(dtype, low, n=45, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g, dtype=torch.float64) for _ in range(3))
    gk = torch.rand(2, 3, n, 8, generator=g, dtype=torch.float64) * low  # log gates in [low, 0]
    S0 = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    return [t.to(dtype).requires_grad_() for t in (q, k, v, gk, S0)]


@pytest.mark.parametrize("chunk,sub", [(16, 1), (16, 2), (16, 4), (16, 16), (12, 3), (32, 8)])
def test_every_split_equals_the_parallel_form(chunk, sub):
    x = _inputs(torch.float64, -1.0)
    ref, S_ref = linear_scan.parallel(*x[:4], x[4], causal=True)
    out, S = gla_chunked(*x[:4], x[4], causal=True, chunk_size=chunk, sub_chunk_size=sub)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(S, S_ref, rtol=1e-12, atol=1e-12)


def test_one_chunk_per_block_gives_the_same_output_state_and_gradients(monkeypatch):
    monkeypatch.setattr(kernel, "_BLOCK_ELEMENTS", 1)  # every chunk its own block: the state crosses blocks
    x = _inputs(torch.float64, -1.0)
    ref, S_ref = linear_scan.parallel(*x[:4], x[4], causal=True)
    (ref.sin().sum() + S_ref.cos().sum()).backward()
    expected = [t.grad.clone() for t in x]
    for t in x:
        t.grad = None
    out, S = gla_chunked(*x[:4], x[4], causal=True, chunk_size=8, sub_chunk_size=2)
    (out.sin().sum() + S.cos().sum()).backward()
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(S, S_ref, rtol=1e-12, atol=1e-12)
    for t, g in zip(x, expected):
        torch.testing.assert_close(t.grad, g, rtol=1e-10, atol=1e-10)


def test_extreme_gates_stay_finite_and_exact_in_fp32():
    """Log gates down to -60 per token: 32 tokens decay by up to e^-1920, far below fp32's range."""
    x64, x32 = _inputs(torch.float64, -60.0), _inputs(torch.float32, -60.0)
    ref, S_ref = linear_scan.parallel(*x64[:4], x64[4], causal=True)
    out, S = gla_chunked(*x32[:4], x32[4], causal=True, chunk_size=32, sub_chunk_size=4)
    (out.square().sum() + S.square().sum()).backward()
    (ref.square().sum() + S_ref.square().sum()).backward()
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(x32, x64):
        assert torch.isfinite(a.grad).all()
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-3, atol=1e-3)


def test_bad_sizes_are_refused():
    x = _inputs(torch.float32, -1.0)
    with pytest.raises(ValueError, match="sub_chunk_size"):
        gla_chunked(*x[:4], None, causal=True, chunk_size=16, sub_chunk_size=3)
    with pytest.raises(ValueError, match="chunk_size"):
        gla_chunked(*x[:4], None, causal=True, chunk_size=0)
    with pytest.raises(ValueError, match="causal"):
        gla_chunked(*x[:4], None, causal=False, chunk_size=16)
