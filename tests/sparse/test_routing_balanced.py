"""Balanced routing: each centroid's top-w queries and keys attend within the cluster; outputs averaged."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit.families.routing import routing_inputs


def _inputs(N=40, H=4, Hkv=2, D=8, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, N, D, generator=g, dtype=torch.float64)
    k = torch.randn(1, Hkv, N, D, generator=g, dtype=torch.float64)
    v = torch.randn(1, Hkv, N, D, generator=g, dtype=torch.float64)
    return q, k, v, routing_inputs(q, k, v, g, clusters=C)["centroids"]


def _by_loops(q, k, v, mu, causal, w):
    """Cluster by cluster, query by query: the authors' top-w per centroid, causal by position, scatter-mean."""
    B, H, N, D = q.shape
    k, v = k.repeat_interleave(H // k.shape[1], 1), v.repeat_interleave(H // v.shape[1], 1)
    out = torch.zeros_like(q)
    for h in range(H):
        sums, counts = torch.zeros(N, D, dtype=q.dtype), [0] * N
        for c in range(mu.shape[1]):
            unit = F.normalize(mu[h, c], dim=0)
            def top(x):
                sims = [float(F.normalize(x[0, h, t], dim=0) @ unit) for t in range(N)]
                return sorted(sorted(range(N), key=lambda t: -sims[t])[:w])  # stable sort: ties to the earlier
            qs, ks = top(q), top(k)
            for i in qs:
                counts[i] += 1
                js = [j for j in ks if j <= i or not causal]
                if js:
                    a = torch.softmax(q[0, h, i] @ k[0, h, js].T / D**0.5, dim=0)
                    sums[i] += a @ v[0, h, js]
        for i in range(N):
            if counts[i]:
                out[0, h, i] = sums[i] / counts[i]
    return out


@pytest.mark.parametrize("causal", [True, False])
def test_both_forms_equal_the_authors_selection_query_by_query(causal):
    q, k, v, mu = _inputs()
    expected = _by_loops(q, k, v, mu, causal, w=12)
    for form in ("reference", "gathered"):
        out = attnkit.attention(q, k, v, "routing_balanced", causal=causal, form=form, centroids=mu, window=12)
        assert (out - expected).abs().max() < 1e-12, form
    # 3 clusters of 12 among 40 tokens: some tokens are taken by none (zeros), some by several (averaged)
    assert (expected.abs().sum(-1) == 0).any()


def test_every_cluster_takes_window_tokens_and_the_window_is_clamped_to_the_sequence():
    from attnkit.families.routing_balanced import cluster_members
    q, _, _, mu = _inputs(N=10)
    assert cluster_members(q, mu, 4).shape == (1, 4, 3, 4)
    members = cluster_members(q, mu, 50)
    assert members.shape == (1, 4, 3, 10) and torch.equal(members[0, 0, 0], torch.arange(10))


def test_the_selection_looks_ahead_but_a_later_value_never_changes_an_earlier_output():
    q, k, v, mu = _inputs(N=40, seed=1)
    out = attnkit.attention(q, k, v, "routing_balanced", causal=True, centroids=mu, window=12)
    v2 = v.clone()
    v2[:, :, 30:] += 1.0
    out2 = attnkit.attention(q, k, v2, "routing_balanced", causal=True, centroids=mu, window=12)
    assert torch.equal(out[:, :, :30], out2[:, :, :30])
    # a later key that is closer to a centroid pushes an earlier key out of that cluster
    k3 = k.clone()
    k3[0, 0, 30:] = mu[0, 0]  # ten later keys on head 0's first centroid: it keeps only 2 earlier keys
    out3 = attnkit.attention(q, k3, v, "routing_balanced", causal=True, centroids=mu, window=12)
    assert not torch.allclose(out[:, 0, :30], out3[:, 0, :30])


def test_gradients_of_the_gathered_form_match_the_reference():
    q, k, v, mu = _inputs(N=30, seed=2)
    cot = torch.randn(1, 4, 30, 8, dtype=torch.float64)
    grads = []
    for form in ("reference", "gathered"):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = attnkit.attention(*leaves, "routing_balanced", causal=True, form=form, centroids=mu, window=10)
        grads.append(torch.autograd.grad((out * cot).sum(), leaves))
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-12


def test_a_layer_moves_its_centroids_in_training():
    torch.manual_seed(0)
    layer = attnkit.nn.Attention(32, heads=4, mechanism="routing_balanced", window=8)
    before = layer.inputs.centroids.clone()
    layer(torch.randn(2, 20, 32), causal=True).sum().backward()
    assert not torch.equal(before, layer.inputs.centroids)
