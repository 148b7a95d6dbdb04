"""KV-cache policies keep what their papers keep: budgets, kept sets, and nothing else dropped.

Values are one-hot (``v = I``), so an output row is the attention weights of
that query: its non-zeros are exactly the keys the policy left it.
"""
import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit.kernels.eviction import EvictionCache

N, D = 40, 8


def inputs(heads=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, N, D, generator=g, dtype=torch.float64)
    k = torch.randn(1, heads, N, D, generator=g, dtype=torch.float64)
    v = torch.eye(N, dtype=torch.float64).expand(1, heads, N, N)
    return q, k, v


def visible(out):
    return out > 0


def test_h2o_decoding_never_holds_more_than_its_budget():
    q, k, v = inputs()
    state = None
    for t in range(N):
        _, state = attnkit.attention(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], "h2o", causal=True,
                                     state=state, return_state=True, heavy=5, recent=3)
        assert isinstance(state, EvictionCache) and state.k.shape[2] == min(t + 1, 8)
    assert state.length == N


def test_h2o_after_a_dense_prompt_keeps_the_recent_tokens_and_the_heaviest_hitters():
    q, k, v = inputs()
    P, heavy, recent = 30, 6, 4
    out = attnkit.attention(q, k, v, "h2o", causal=True, form="cache", heavy=heavy, recent=recent, start=P)
    dense = attnkit.attention(q, k, v, "softmax", causal=True)
    assert torch.allclose(out[:, :, :P], dense[:, :, :P])  # the prompt is prefilled with full attention
    accumulated = dense[:, :, :P, :P].sum(dim=2)  # attention each prompt token received during prefill
    for h in range(2):
        older = accumulated[0, h, : P - recent]
        expected = set(older.topk(heavy).indices.tolist()) | set(range(P - recent, P)) | {P}
        assert set(visible(out[0, h, P]).nonzero().flatten().tolist()) == expected
    assert int(visible(out[0, 0, P:]).sum(-1).max()) == heavy + recent + 1


def test_tova_heads_share_their_kept_tokens_and_the_budget_holds():
    q, k, v = inputs(heads=3)
    out = attnkit.attention(q, k, v, "tova", causal=True, budget=7)
    seen = visible(out[0])
    assert (seen == seen[0]).all()
    assert seen.sum(-1).max() == 8  # the budget + the query's own token before eviction
    # the first eviction drops the lowest head-averaged weight of query 7 (the 8th token)
    dropped = out[0, :, 7, :8].mean(0).argmin().item()
    assert not seen[0, 8, dropped] and seen[0, 8].sum() == 8


def test_knorm_keeps_the_lowest_key_norms():
    q, k, v = inputs()
    P, budget = 20, 6
    out = attnkit.attention(q, k, v, "knorm", causal=True, budget=budget, start=P)
    seen = visible(out[0])
    norms = k[0].norm(dim=-1)
    for h in range(2):
        kept = set(norms[h, :P].topk(budget, largest=False).indices.tolist())
        assert set(seen[h, P].nonzero().flatten().tolist()) == kept | {P}
        for t in range(P, N):  # the cache stays the `budget` lowest norms of everything so far
            assert set(seen[h, t].nonzero().flatten().tolist()) - {t} == set(
                norms[h, :t].topk(budget, largest=False).indices.tolist())


def test_snapkv_keeps_the_window_the_voted_keys_and_every_decoded_token():
    q, k, v = inputs()
    P, cap, window = 24, 10, 4
    k = k.clone()
    q = q.clone()
    q[:, :, P - window:P] = 0.0
    q[:, :, P - window:P, 0] = 8.0
    k[:, :, 11, 0] = 8.0  # the observation window stares at key 11
    out = attnkit.attention(q, k, v, "snapkv", causal=True, prompt=P, capacity=cap, window=window, kernel=1)
    seen = visible(out[0])
    assert (seen[:, :P, :P] == torch.ones(P, P, dtype=torch.bool).tril()).all()  # the prompt is prefilled dense
    assert not seen[:, :P, P:].any()
    for t in range(P, N):
        assert seen[:, t, P - window:t + 1].all()  # window and decoded tokens: never evicted
        assert (seen[:, t, :P - window].sum(-1) == cap - window).all()
    assert seen[:, P:, 11].all()
    prefix = P - window
    votes = torch.softmax(q[:, :, prefix:P] @ k[:, :, :P].transpose(-1, -2) / D ** 0.5 + torch.full(
        (window, P), float("-inf"), dtype=torch.float64).triu(prefix + 1), dim=-1)[..., :prefix].sum(2)
    top = votes.topk(cap - window).indices.sort().values
    assert (seen[:, P, :prefix].nonzero()[:, 1].view(2, -1) == top[0]).all()


def test_snapkv_pools_votes_and_leaves_a_short_prompt_alone():
    q, k, v = inputs()
    short = attnkit.attention(q, k, v, "snapkv", causal=True, prompt=8, capacity=10, window=4, kernel=3)
    assert torch.allclose(short, attnkit.attention(q, k, v, "softmax", causal=True))
    votes = torch.zeros(1, 1, 9, dtype=torch.float64)
    votes[..., 4] = 3.0
    pooled = F.avg_pool1d(votes, 3, stride=1, padding=1)
    assert pooled[0, 0, 3:6].tolist() == [1.0, 1.0, 1.0]  # a voted key brings its neighbours


@pytest.mark.parametrize("name,params,message", [
    ("h2o", {"heavy": 0, "recent": 0}, "budget"),
    ("h2o", {"heavy": -1}, "heavy"),
    ("tova", {"budget": 2.5}, "budget"),
    ("snapkv", {"window": 40, "capacity": 40}, "window"),
    ("snapkv", {"kernel": 4}, "kernel"),
])
def test_bad_budgets_are_refused(name, params, message):
    q, k, v = inputs()
    with pytest.raises((ValueError, TypeError), match=message):
        attnkit.attention(q, k, v, name, causal=True, **params)
