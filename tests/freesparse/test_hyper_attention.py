"""HyperAttention's fast form computes the estimate its multiplicity matrix defines, from the same draws."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.builders.estimated_sparse import selection_report
from attnkit.families import hyper_attention as hyper

P = dict(lsh_bits=3, block=8, samples=8, min_len=16, seed=0)


def _qkv(nq, nk, H=4, Hkv=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, H, nq, D, generator=g, dtype=torch.float64),
            torch.randn(1, Hkv, nk, D, generator=g, dtype=torch.float64),
            torch.randn(1, Hkv, nk, D, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("nq,nk,causal", [(300, 300, True), (129, 129, True), (100, 100, False), (40, 70, False)])
def test_fast_form_equals_the_weighted_softmax_of_the_reference(nq, nk, causal):
    q, k, v = _qkv(nq, nk, seed=nq)
    ref = hyper._reference(q, k, v, causal=causal, mask=None, scale=0.25, **P)
    assert (hyper.hyper_attention(q, k, v, causal=causal, mask=None, scale=0.25, **P) - ref).abs().max() < 1e-12
    fast32 = hyper.hyper_attention(q.float(), k.float(), v.float(), causal=causal, mask=None, scale=0.25, **P)
    assert (fast32.double() - ref).abs().max() < 1e-5


def test_multiplicities_are_blocks_plus_weighted_samples():
    q, k, _ = _qkv(64, 64, H=1, Hkv=1)
    M = hyper.weights_of(q, k, torch.arange(64), causal=False, p=P)  # 8 blocks of 8 keys and 8 queries, 8 draws
    assert ((M == 1).sum(-1) == 8).all()  # a query's own block, once each
    sampled = M.masked_fill(M == 1, 0)
    assert (sampled % 8 == 0).all() and (sampled.sum(-1) <= 64).all()  # n / s = 8 per draw outside the block
    assert (sampled.sum(-1) > 0).any()


def test_short_inputs_are_exact_and_the_seed_is_the_randomness():
    q, k, v = _qkv(15, 15, seed=1)
    for causal in (True, False):
        exact = attnkit.attention(q, k, v, "softmax", causal=causal)
        assert (attnkit.attention(q, k, v, "hyper_attention", causal=causal, **P) - exact).abs().max() < 1e-12
    q, k, v = _qkv(128, 128, seed=2)
    a = attnkit.attention(q, k, v, "hyper_attention", causal=True, **P)
    assert torch.equal(a, attnkit.attention(q, k, v, "hyper_attention", causal=True, **P))
    assert not torch.equal(a, attnkit.attention(q, k, v, "hyper_attention", causal=True, **{**P, "seed": 1}))


def test_gray_code_hash():
    directions = torch.eye(3, dtype=torch.float64)
    x = torch.tensor([[[[1.0, -1, -1], [1, 1, -1], [-1, -1, 1], [1, 1, 1]]]], dtype=torch.float64)
    assert hyper.lsh_hash(x, directions).flatten().tolist() == [1, 2, 6, 4]  # codes 1, 3, 4, 7 in Gray order


def test_report():
    q, k, v = _qkv(128, 128, seed=3)
    report = selection_report("hyper_attention", q, k, v, rows=64, **P)
    assert 0 < report["density"] < 1 and 0 < report["recall"] < 1 and report["output_rel_error"] > 0
