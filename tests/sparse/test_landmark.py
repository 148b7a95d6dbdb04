"""Landmark attention: the grouped softmax and block retrieval as the paper's equations, query by query."""
from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit.families.landmark import landmark_weights


def _qkv(N=23, H=2, Hkv=1, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, H, N, D, generator=g, dtype=torch.float64),
            torch.randn(1, Hkv, N, D, generator=g, dtype=torch.float64),
            torch.randn(1, Hkv, N, D, generator=g, dtype=torch.float64))


def _by_loops(q, k, bs, top_k):
    """p_ij per query: own block directly, earlier (retrieved) blocks through their landmark's share."""
    H, N, D = q.shape[1], q.shape[2], q.shape[3]
    P = torch.zeros(1, H, N, N, dtype=torch.float64)
    for h in range(H):
        s = q[0, h] @ k[0, h * k.shape[1] // H].T / math.sqrt(D)
        for i in range(N):
            c = i // bs
            blocks = [b for b in range(c) if (b + 1) * bs <= N]
            if top_k:
                blocks = sorted(blocks, key=lambda b: (-float(s[i, b * bs + bs - 1]), b))[:top_k]
            own = list(range(c * bs, i + 1))
            Z = sum(math.exp(s[i, b * bs + bs - 1]) for b in blocks) + sum(math.exp(s[i, j]) for j in own)
            for j in own:
                P[0, h, i, j] = math.exp(s[i, j]) / Z
            for b in blocks:
                tokens = range(b * bs, b * bs + bs - 1)
                inner = sum(math.exp(s[i, j]) for j in tokens)
                for j in tokens:
                    P[0, h, i, j] = math.exp(s[i, b * bs + bs - 1]) / Z * math.exp(s[i, j]) / inner
    return P


@pytest.mark.parametrize("top_k", [0, 2])
def test_weights_and_both_forms_follow_the_equations(top_k):
    q, k, v = _qkv()
    P = _by_loops(q, k, 5, top_k)
    W = landmark_weights(q, k, v, causal=True, mask=None, scale=8**-0.5, block_size=5, top_k=top_k)
    assert (W - P).abs().max() < 1e-12
    assert torch.allclose(P.sum(-1), torch.ones(1, dtype=P.dtype))
    expected = P @ v.repeat_interleave(2, 1)
    for form in ("reference", "chunked"):
        out = attnkit.attention(q, k, v, "landmark", causal=True, form=form, block_size=5, top_k=top_k)
        assert (out - expected).abs().max() < 1e-12, form


def test_past_landmarks_pass_on_their_weight_and_retrieval_reads_only_top_k_blocks():
    q, k, v = _qkv(N=40, seed=1)
    W = landmark_weights(q, k, v, causal=True, mask=None, scale=8**-0.5, block_size=5, top_k=2)
    qpos = torch.arange(40)[:, None]
    landmark = torch.arange(4, 40, 5)
    past = landmark[None, :] // 5 < qpos // 5
    assert (W[..., landmark][past.expand_as(W[..., landmark])] == 0).all()
    read_blocks = (W.reshape(1, 2, 40, 8, 5) > 0).any(-1).sum(-1)  # blocks with any weight, the own one included
    assert (read_blocks <= 3).all() and (read_blocks[..., 30:] == 3).all()
    every = landmark_weights(q, k, v, causal=True, mask=None, scale=8**-0.5, block_size=5, top_k=100)
    assert torch.equal(every, landmark_weights(q, k, v, causal=True, mask=None, scale=8**-0.5, block_size=5, top_k=0))


def test_float32_and_float64_retrieve_the_same_blocks_without_near_ties():
    q, k, v = _qkv(N=120, seed=2)
    s = q @ k.transpose(-1, -2)
    gaps = s[..., 4::5].sort(dim=-1).values.diff(dim=-1)
    assert gaps.min() > 1e-6
    a = landmark_weights(q, k, v, causal=True, mask=None, scale=8**-0.5, block_size=5, top_k=3) > 0
    b = landmark_weights(q.float(), k.float(), v.float(), causal=True, mask=None, scale=8**-0.5, block_size=5,
                         top_k=3) > 0
    assert torch.equal(a, b)


def test_bad_block_size_and_top_k_are_refused():
    q, k, v = _qkv(N=8)
    with pytest.raises(ValueError, match="block_size"):
        attnkit.attention(q, k, v, "landmark", causal=True, block_size=1)
    with pytest.raises(ValueError, match="top_k"):
        attnkit.attention(q, k, v, "landmark", causal=True, top_k=-1)


def test_retrieval_form_equals_the_reference_and_runs_by_default_when_top_k_is_set():
    import attnkit
    from attnkit.families import landmark

    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 4, 45, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 45, 8, generator=g, dtype=torch.float64) for _ in range(2))
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    kw = dict(causal=True, mask=None, scale=0.3, block_size=8, top_k=2)
    ref, fast = landmark._reference(q, k, v, **kw), landmark._retrieval(q, k, v, chunk=7, **kw)
    assert torch.allclose(ref, fast, atol=1e-12)
    w = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad((ref * w).sum(), leaves), torch.autograd.grad((fast * w).sum(), leaves)):
        assert torch.allclose(a, b, atol=1e-12)
    assert attnkit.explain(q, k, v, "landmark", causal=True, block_size=8, top_k=2).form == "retrieval"
    assert attnkit.explain(q, k, v, "landmark", causal=True, block_size=8, top_k=0).form == "chunked"
