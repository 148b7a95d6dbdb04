"""Dynamic Mask Attention: the mask by per-query loops, the chunked form in small chunks, decode, the layer."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.families import dma


def _problem(N=40, seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 4, N, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 2, N, 8, generator=g, dtype=torch.float64) for _ in range(2))
    bias = torch.randn(1, 2, N, generator=g, dtype=torch.float64)
    return q, k, v, bias.round() if ties else bias


def test_mask_is_the_top_w_deltas_each_query_sees_ties_to_the_later_key():
    _, _, _, bias = _problem(ties=True)
    mask = dma.dynamic_mask(bias, 40, 6)
    for t in range(40):
        seen = [(bias[0, 1, j].item(), j) for j in range(t + 1)]
        want = {j for _, j in sorted(seen, reverse=True)[:6]}
        assert set(mask[0, 1, t].nonzero().flatten().tolist()) == want


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_equals_reference_with_ties_and_gradients(chunk):
    q, k, v, bias = _problem(ties=True)
    leaves = [t.requires_grad_(True) for t in (q, k, v, bias)]
    ref = dma._reference(q, k, v, causal=True, mask=None, scale=0.3, window=6, bias=bias)
    fast = dma._chunked(q, k, v, causal=True, mask=None, scale=0.3, window=6, bias=bias, chunk=chunk)
    assert torch.allclose(ref, fast, atol=1e-12)
    w = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad((ref * w).sum(), leaves), torch.autograd.grad((fast * w).sum(), leaves)):
        assert torch.allclose(a, b, atol=1e-12)


def test_constant_delta_is_a_sliding_window():
    q, k, v, bias = _problem()
    out = attnkit.attention(q, k, v, "dma", causal=True, window=5, bias=torch.zeros_like(bias))
    want = attnkit.attention(q, k, v, "sliding_window", causal=True, window=4, form="reference")  # 4 before + own
    assert torch.allclose(out, want, atol=1e-12)


def test_decode_token_by_token_equals_one_shot_and_leaves_the_state_alone():
    q, k, v, bias = _problem(N=20)
    one = attnkit.attention(q, k, v, "dma", causal=True, window=4, bias=bias)
    state, outs = None, []
    for t in range(20):
        s = slice(t, t + 1)
        o, new = attnkit.attention(q[:, :, s], k[:, :, s], v[:, :, s], "dma", causal=True, window=4,
                                   bias=bias[:, :, s], state=state, return_state=True)
        assert state is None or state.length == t
        state = new
        outs.append(o)
    assert torch.allclose(torch.cat(outs, dim=2), one, atol=1e-12)


def test_layer_learns_its_key_scores():
    torch.manual_seed(0)
    layer = attnkit.nn.Attention(32, heads=4, kv_heads=2, mechanism="dma", window=8)
    with torch.no_grad():
        layer.inputs.A.fill_(1.0)
    layer(torch.randn(2, 30, 32), causal=True).square().mean().backward()
    assert layer.inputs.A.grad.abs().max() > 0 and layer.inputs.dt_proj.weight.grad.abs().max() > 0


def test_bad_bias_is_refused():
    q, k, v, bias = _problem()
    with pytest.raises(ValueError, match="bias"):
        attnkit.attention(q, k, v, "dma", causal=True, bias=bias[:, :1])
