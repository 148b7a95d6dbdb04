"""MQA/GQA conversion, weighted GQA, key-driven GQA."""
from __future__ import annotations

import pytest
import torch

from attnkit.nn import Attention, KeyDrivenGQA, WeightedGQA, allocate_queries, mean_pool_kv

X = torch.randn(2, 7, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _mha(**kw):
    torch.manual_seed(0)
    return Attention(32, 4, bias=True, **kw).double()


def test_mean_pooling_gives_gqa_and_mqa():
    mha = _mha()
    gqa, mqa = mean_pool_kv(mha, 2), mean_pool_kv(mha, 1)
    assert (gqa.kv_heads, mqa.kv_heads) == (2, 1)
    k = mha.k_proj.weight.view(4, 8, 32)
    torch.testing.assert_close(mqa.k_proj.weight, k.mean(0))
    torch.testing.assert_close(gqa.k_proj.weight, torch.cat([k[:2].mean(0), k[2:].mean(0)]))
    torch.testing.assert_close(mean_pool_kv(mha, 4)(X, causal=True), mha(X, causal=True))  # one head per group = MHA


@pytest.mark.parametrize("weighting", ["head", "column"])
def test_weighted_gqa_starts_at_mean_pooling_and_folds_exactly(weighting):
    mha = _mha(rope=True)
    wgqa = WeightedGQA.from_mha(mha, 2, weighting=weighting)
    torch.testing.assert_close(wgqa(X, causal=True), mean_pool_kv(mha, 2)(X, causal=True))
    with torch.no_grad():
        wgqa.k_weights.uniform_(0, 1)
        wgqa.v_weights.uniform_(-1, 1)
    torch.testing.assert_close(wgqa.to_gqa()(X, causal=True), wgqa(X, causal=True))
    wgqa(X).sum().backward()
    assert wgqa.k_weights.grad is not None and wgqa.v_weights.grad.abs().sum() > 0


def test_weighted_gqa_decodes_incrementally():
    wgqa = WeightedGQA(32, 4, 2).double()
    out, state = wgqa(X[:, :3], causal=True, return_state=True)
    out2, _ = wgqa(X[:, 3:], causal=True, state=state, return_state=True)
    torch.testing.assert_close(torch.cat([out, out2], 1), wgqa(X, causal=True))


def test_query_allocation_follows_key_norms():
    assert allocate_queries(torch.tensor([1.0, 2.0, 3.0, 4.0]), 8, min_max=True) == [0, 1, 3, 4]
    assert allocate_queries(torch.tensor([2.0, 2.0]), 6, min_max=True) == [3, 3]
    assert allocate_queries(torch.tensor([1.0, 3.0]), 8, min_max=False) == [2, 6]
    assert sum(allocate_queries(torch.tensor([1.0, 1.1, 5.0]), 4, min_max=True)) == 4


def test_kdgqa_equals_multi_head_attention_with_kv_heads_repeated_by_allocation():
    torch.manual_seed(1)
    layer = KeyDrivenGQA(32, 4, 2, bias=True).double()
    out = layer(X)
    group = torch.repeat_interleave(torch.arange(2), torch.tensor(layer.allocation))
    mha = Attention(32, 4, bias=True).double()
    mha.q_proj.load_state_dict(layer.q_proj.state_dict())
    mha.out_proj.load_state_dict(layer.out_proj.state_dict())
    for name in ("k_proj", "v_proj"):
        src = getattr(layer, name)
        getattr(mha, name).weight.data.copy_(src.weight.view(2, 8, 32)[group].reshape(32, 32))
        getattr(mha, name).bias.data.copy_(src.bias.view(2, 8)[group].reshape(32))
    torch.testing.assert_close(out, mha(X))


def test_dgqa_tracks_norms_in_training_and_may_be_causal_in_eval():
    layer = KeyDrivenGQA(32, 4, 2, mode="dgqa").double()
    assert layer.allocation == [2, 2]
    layer.train()(X)
    assert not torch.equal(layer.norm_ema, torch.ones(2, dtype=torch.float64))
    layer.eval()
    out = layer(X, causal=True)
    assert out.shape == X.shape and sum(layer.allocation) == 4
    with pytest.raises(ValueError, match="causal"):
        KeyDrivenGQA(32, 4, 2)(X, causal=True)
    with pytest.raises(ValueError, match="mode"):
        KeyDrivenGQA(32, 4, 2, mode="x")
    with pytest.raises(ValueError, match="kv_heads"):
        mean_pool_kv(mean_pool_kv(_mha(), 2), 1)
