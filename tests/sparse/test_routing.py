"""Routing attention: the clustered form routes and attends as the paper's equations; the k-means update."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit.families.routing import assign_clusters, routing_inputs, update_centroids


def _inputs(N=60, H=4, Hkv=2, D=16, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, N, D, generator=g, dtype=torch.float64)
    k = torch.randn(1, Hkv, N, D, generator=g, dtype=torch.float64)
    v = torch.randn(1, Hkv, N, D, generator=g, dtype=torch.float64)
    return q, k, v, routing_inputs(q, k, v, g, clusters=C)["centroids"]


def _by_loops(q, k, v, mu, causal):
    """X'_i = sum over keys of Q_i's cluster (j <= i when causal) of softmax(Q_i K_j / sqrt d) V_j, one query at a time."""
    B, H, N, D = q.shape
    k, v = k.repeat_interleave(H // k.shape[1], 1), v.repeat_interleave(H // v.shape[1], 1)
    out = torch.zeros_like(q)
    for h in range(H):
        unit = F.normalize(mu[h], dim=-1)
        cq = [int((F.normalize(q[0, h, i], dim=0) @ unit.T).argmax()) for i in range(N)]
        ck = [int((F.normalize(k[0, h, j], dim=0) @ unit.T).argmax()) for j in range(N)]
        for i in range(N):
            js = [j for j in range(N) if ck[j] == cq[i] and (j <= i or not causal)]
            if js:
                w = torch.softmax(q[0, h, i] @ k[0, h, js].T / D**0.5, dim=0)
                out[0, h, i] = w @ v[0, h, js]
    return out


@pytest.mark.parametrize("causal", [True, False])
def test_clustered_form_equals_the_equations_query_by_query(causal):
    q, k, v, mu = _inputs()
    expected = _by_loops(q, k, v, mu, causal)
    for form in ("reference", "clustered"):
        out = attnkit.attention(q, k, v, "routing", causal=causal, form=form, centroids=mu)
        assert (out - expected).abs().max() < 1e-12, form


def test_clustered_form_crosses_query_chunks_and_matches_gradients():
    q, k, v, mu = _inputs(N=70, seed=1)
    from attnkit.families.routing import _clustered  # small chunks: many chunks, several clusters per chunk
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = _clustered(*leaves, causal=True, mask=None, scale=16**-0.5, centroids=mu, chunk=8)
    ref = attnkit.attention(q, k, v, "routing", causal=True, form="reference", centroids=mu)
    assert (out - ref).abs().max() < 1e-12
    cot = torch.randn_like(out)
    grads = torch.autograd.grad((out * cot).sum(), leaves)
    ref_leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref = attnkit.attention(*ref_leaves, "routing", causal=True, form="reference", centroids=mu)
    for a, b in zip(grads, torch.autograd.grad((ref * cot).sum(), ref_leaves)):
        assert (a - b).abs().max() < 1e-10


def test_float32_and_float64_route_alike_without_near_ties():
    q, k, _, mu = _inputs(N=200, seed=2)
    sim = F.normalize(q, dim=-1) @ F.normalize(mu, dim=-1).transpose(-1, -2)
    top2 = sim.topk(2, dim=-1).values
    assert (top2[..., 0] - top2[..., 1]).min() > 1e-5  # no near-ties in this draw
    assert torch.equal(assign_clusters(q, mu), assign_clusters(q.float(), mu.float()))


def test_update_centroids_is_the_papers_moving_average():
    q, k, _, mu = _inputs(N=20, seed=3)
    decay = 0.9
    new = update_centroids(mu, q, k, decay=decay)
    kk = k.repeat_interleave(2, 1)
    expected = decay * mu.clone()
    for h in range(4):
        for x in (q[0, h], kk[0, h]):
            for t in range(x.shape[0]):
                c = int((F.normalize(x[t], dim=0) @ F.normalize(mu[h], dim=-1).T).argmax())
                expected[h, c] += (1 - decay) / 2 * F.normalize(x[t], dim=0)
    assert (new - expected).abs().max() < 1e-12
    assert torch.equal(update_centroids(mu, q, k, decay=1.0), mu)
    assert not torch.equal(new, mu)  # a new tensor; the input is unchanged


def test_repeated_updates_find_the_clusters_of_the_data():
    g = torch.Generator().manual_seed(4)
    centres = F.normalize(torch.randn(1, 3, 8, generator=g, dtype=torch.float64), dim=-1)
    pick = torch.randint(0, 3, (1, 1, 300), generator=g)
    x = centres[0, pick] + 0.05 * torch.randn(1, 1, 300, 8, generator=g, dtype=torch.float64)
    mu = F.normalize(centres + 0.5 * torch.randn(1, 3, 8, generator=g, dtype=torch.float64), dim=-1)
    for _ in range(30):
        mu = update_centroids(mu, x, x, decay=0.5)
    cos = F.normalize(mu[0], dim=-1) @ centres[0].T
    assert (cos.max(dim=1).values > 0.99).all() and len(set(cos.argmax(dim=1).tolist())) == 3


def test_bad_centroids_and_decay_are_refused():
    q, k, v, mu = _inputs(N=8)
    with pytest.raises(ValueError, match="centroids"):
        attnkit.attention(q, k, v, "routing", causal=True, centroids=mu[:2])
    with pytest.raises(ValueError, match="centroids"):
        attnkit.attention(q, k, v, "routing", causal=True, centroids=mu[0])
    with pytest.raises(ValueError, match="decay"):
        update_centroids(mu, q, k, decay=1.5)


def test_layer_moves_its_centroids_in_training_only():
    torch.manual_seed(0)
    layer = attnkit.nn.Attention(32, heads=4, kv_heads=2, mechanism="routing")
    x = torch.randn(2, 30, 32)
    before = layer.inputs.centroids.clone()
    layer.eval()
    layer(x, causal=True)
    assert torch.equal(layer.inputs.centroids, before)
    layer.train()
    layer(x, causal=True).square().mean().backward()
    assert not torch.equal(layer.inputs.centroids, before)
    assert "inputs.centroids" in layer.state_dict()
