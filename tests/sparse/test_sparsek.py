"""SPARSEK: the operator (projection, both ways of finding tau, its gradient), the chunked form, decode, the layer."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.families import sparsek as sk


def _z(rows=6, n=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, n, generator=g, dtype=torch.float64)
    return z, torch.rand(rows, n, generator=g) > 0.2


@pytest.mark.parametrize("k", [1, 3, 4])
def test_operator_is_the_projection_onto_the_capped_simplex(k):
    z, valid = _z()
    p = sk.sparsek_by_breakpoints(z, valid, k)
    assert torch.equal(p, sk.sparsek_by_sorting(z, valid, k).clamp(min=0)) or torch.allclose(
        p, sk.sparsek_by_sorting(z, valid, k), atol=1e-14)
    assert (p[~valid] == 0).all() and (p >= 0).all() and (p <= 1).all()
    many = valid.sum(-1) > k
    assert torch.allclose(p.sum(-1)[many], torch.full_like(p.sum(-1)[many], float(k)))
    assert (p[~many] == valid[~many].double()).all()
    # optimality: no feasible step along e_i - e_j (i, j in the row) lowers ||p - z||^2
    for r in torch.nonzero(many).flatten().tolist():
        for i in valid[r].nonzero().flatten().tolist():
            for j in valid[r].nonzero().flatten().tolist():
                if p[r, i] < 1 and p[r, j] > 0:  # moving mass from j to i is feasible
                    assert (p[r, i] - z[r, i]) - (p[r, j] - z[r, j]) >= -1e-12


def test_operator_gradient_is_the_projection_jacobian():
    z, valid = _z(rows=3, n=9, seed=1)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: sk.sparsek_by_sorting(x, valid, 3), (z,))


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunked_equals_reference_with_gradients(chunk):
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 4, 45, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 45, 8, generator=g, dtype=torch.float64) for _ in range(2))
    u = torch.randn(1, 2, 45, generator=g, dtype=torch.float64)
    leaves = [t.requires_grad_(True) for t in (q, k, v, u)]
    kw = dict(causal=True, mask=None, scale=0.3, select_count=3, window=4, scores=u)
    ref, fast = sk._reference(q, k, v, **kw), sk._chunked(q, k, v, chunk=chunk, **kw)
    assert torch.allclose(ref, fast, atol=1e-12)
    w = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad((ref * w).sum(), leaves), torch.autograd.grad((fast * w).sum(), leaves)):
        assert torch.allclose(a, b, atol=1e-12)


def test_a_dropped_key_never_returns():
    u = torch.randn(1, 1, 60, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    m = sk.sparsek_mask(u, 60, select_count=4, window=3)
    dropped = torch.zeros(60, dtype=torch.bool)
    for t in range(60):
        before = torch.arange(60) <= t - 3
        assert not (m[0, 0, t][dropped] > 0).any()
        if before.sum() > 4:
            dropped |= before & (m[0, 0, t] == 0)


def test_decode_equals_one_shot():
    g = torch.Generator().manual_seed(4)
    q = torch.randn(1, 2, 16, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 16, 8, generator=g, dtype=torch.float64) for _ in range(2))
    u = torch.randn(1, 2, 16, generator=g, dtype=torch.float64)
    one = attnkit.attention(q, k, v, "sparsek", causal=True, select_count=2, window=3, scores=u)
    state, outs = None, []
    for t in range(16):
        s = slice(t, t + 1)
        o, state = attnkit.attention(q[:, :, s], k[:, :, s], v[:, :, s], "sparsek", causal=True, select_count=2,
                                     window=3, scores=u[:, :, s], state=state, return_state=True)
        outs.append(o)
    assert torch.allclose(torch.cat(outs, dim=2), one, atol=1e-12)


def test_layer_trains_its_scoring_network():
    torch.manual_seed(0)
    layer = attnkit.nn.Attention(32, heads=4, kv_heads=2, mechanism="sparsek", select_count=3, window=4)
    layer(torch.randn(2, 30, 32), causal=True).square().mean().backward()
    assert layer.inputs.proj.weight.grad.abs().max() > 0


def test_each_query_attends_to_its_k_best_scored_keys_before_the_window_weighted_by_sparsek():
    g = torch.Generator().manual_seed(5)
    u = torch.randn(1, 1, 40, generator=g, dtype=torch.float64) * 0.3  # close scores: the support exceeds k
    m = sk.sparsek_mask(u, 40, select_count=4, window=3)
    wider = 0
    for t in range(40):
        before = torch.arange(max(t - 2, 0))  # keys j <= t - 3
        if len(before) == 0:
            continue
        soft = sk.sparsek_by_breakpoints(u[0, 0, before], torch.ones(len(before), dtype=torch.bool), 4)
        best = u[0, 0, before].argsort(descending=True, stable=True)[:4]
        expected = torch.zeros(len(before), dtype=torch.float64)
        expected[best] = soft[best]
        assert (m[0, 0, t, before] - expected).abs().max() < 1e-12 and torch.equal(m[0, 0, t, before] > 0, expected > 0)
        assert torch.equal(m[0, 0, t, t - 2 : t + 1], torch.ones(3, dtype=torch.float64))
        wider += int((soft > 0).sum() > 4)
    assert wider > 0  # the cut mattered in this draw


def test_decode_holds_only_the_window_and_the_support_and_equals_one_shot():
    g = torch.Generator().manual_seed(6)
    N = 120
    q = torch.randn(1, 2, N, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 1, N, 8, generator=g, dtype=torch.float64) for _ in range(2))
    u = torch.randn(1, 1, N, generator=g, dtype=torch.float64) + 0.2 * torch.arange(N, dtype=torch.float64)
    kw = dict(causal=True, select_count=3, window=5, scores=None)
    one = attnkit.attention(q, k, v, "sparsek", **{**kw, "scores": u})
    state, outs, held = None, [], []
    for t in range(N):
        o, state = attnkit.attention(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], "sparsek",
                                     **{**kw, "scores": u[:, :, t:t + 1]}, state=state, return_state=True)
        outs.append(o)
        held.append(state.k.shape[2])
    assert torch.allclose(torch.cat(outs, dim=2), one, atol=1e-12)
    # scores rising with the position (the paper's position term): the support stays small, the cache constant
    assert max(held) <= 16 and state.length == N  # of 120 tokens
