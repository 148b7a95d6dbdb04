"""Heads that keep different numbers of tokens: the packed store, Ada-KV and RazorAttention."""
import math

import pytest
import torch

from attnkit.cache import AdaKV, KVState, NoCompression, RaggedKV, RazorAttention, SnapKV, StreamingLLM
from attnkit.cache.adakv import head_budgets
from attnkit.cache.razor import retrieval_heads, retrieval_scores
from attnkit.cache.scores import weights

from .helpers import qkv, run


def rows(n=(3, 5, 1, 4), d=2, page=2):
    """A paged store with the given row lengths (batch 2, 2 kv heads) and the rows it should read back."""
    count = torch.tensor(n).view(2, 2)
    k = torch.randn(2, 2, max(n), d, dtype=torch.float64)
    pos = torch.arange(max(n), dtype=torch.int32).expand(2, 2, -1).contiguous()
    return RaggedKV.pack(k, 2 * k, pos, count, length=max(n), prompt=max(n), room=1, page=page), k, count


def test_paged_rows_read_back_padded_and_cost_only_their_tokens():
    store, k, count = rows()
    assert store.used == 5 and store.count.tolist() == count.tolist() and store.pages == 2 + 3 + 1 + 2
    for b in range(2):
        for h in range(2):
            c = int(count[b, h])
            torch.testing.assert_close(store.k[b, h, :c], k[b, h, :c])
            torch.testing.assert_close(store.v[b, h, :c], 2 * k[b, h, :c])
            assert (store.pos[b, h, c:] > 10**9).all()  # padding sits beyond every query
    per_token = 2 * 2 * 8 + 4  # key + value (2 float64 each) + int32 position
    assert store.nbytes() == 13 * per_token + 2 * 8 * 8  # + each page's row and index
    assert store.allocated_bytes() == (8 + 1) * 2 * per_token + 2 * 8 * 9  # one spare page: row (1, 1) needs it


def test_appends_go_to_the_end_of_every_row_and_a_returned_value_never_changes():
    store, k, count = rows()
    new = torch.randn(2, 2, 1, 2, dtype=torch.float64)
    a = store.append(new, new)  # into the last pages' room and new pages of the pool: in place
    assert a.storage()[0].data_ptr() == store.storage()[0].data_ptr()
    snapshot = (a.k.clone(), a.pos.clone())
    b = a.append(new + 1, new + 1)  # the pool is full: grown, the values keep theirs
    c = a.append(new + 2, new + 2)  # a second continuation of the same value: a pool of its own
    assert c.storage()[0].data_ptr() != b.storage()[0].data_ptr()
    torch.testing.assert_close((a.k, a.pos), snapshot)
    for s, x in ((b, new + 1), (c, new + 2)):
        assert s.count.tolist() == (count + 2).tolist() and s.length == 7
        for r in range(4):
            i, j = divmod(r, 2)
            n = int(count[i, j])
            torch.testing.assert_close(s.k[i, j, :n], k[i, j, :n])
            torch.testing.assert_close(s.k[i, j, n], new[i, j, 0])
            torch.testing.assert_close(s.k[i, j, n + 1], x[i, j, 0])
            assert s.pos[i, j, n : n + 2].tolist() == [5, 6]


@pytest.mark.parametrize("n", [1, 3])
def test_attention_over_the_pages_is_attention_over_the_rows_read_back(n):
    store, k, count = rows(n=(3, 5, 0, 4), d=4, page=2)
    store._pool.bias = torch.zeros(store._pool.pos.shape, dtype=torch.float32)
    store._pool.bias.view(-1)[:3] = torch.tensor([0.0, 1.5, 0.7])  # merged tokens in row 0's first page
    store = store.append(*(torch.randn(2, 2, n, 4, dtype=torch.float64),) * 2)
    q = torch.randn(2, 6, n, 4, dtype=torch.float64)  # 3 query heads per kv head
    qpos = torch.arange(store.length - n, store.length, dtype=torch.int32)
    direct = weights(q, qpos, store, 0.5) @ store.v.repeat_interleave(3, dim=1)
    torch.testing.assert_close(store.attend(q, 0.5), direct)
    assert store.count[1, 0] == n and weights(q, qpos, store, 0.5)[1, 0, 0].count_nonzero() == 1


def test_adakv_gives_budget_from_concentrated_heads_to_spread_ones_with_a_safeguard():
    rank = torch.zeros(1, 2, 10, dtype=torch.float64)
    rank[0, 0, :2] = 1.0  # head 0: attention on two tokens
    rank[0, 1] = torch.linspace(0.5, 0.9, 10)  # head 1: spread out
    assert head_budgets(rank, 4, alpha=0.0).tolist() == [[2, 6]]
    assert head_budgets(rank, 4, alpha=0.5).tolist() == [[2, 6]]
    assert head_budgets(rank, 4, alpha=1.0).tolist() == [[4, 4]]
    rank[0, 1] = torch.linspace(1.1, 1.9, 10)  # head 1 outscores every token of head 0
    assert head_budgets(rank, 4, alpha=0.0).tolist() == [[0, 8]]
    assert head_budgets(rank, 4, alpha=0.25).tolist() == [[1, 7]]


def test_adakv_keeps_each_heads_best_tokens_and_decode_is_attention_over_them():
    q, k, v = qkv()
    k[:, 0] *= 4  # kv head 0's attention is concentrated on few tokens, head 1's is spread out
    scorer = SnapKV(10, window=4, kernel=3)
    out, states = run(AdaKV(scorer, alpha=0.2), q, k, v, prompt_len=20)
    store = states[0].store
    assert isinstance(store, RaggedKV) and int(store.count.sum()) == 2 * 10 and store.count.min() >= 2 + 4
    full = KVState(NoCompression()).step(q[:, :, :20], k[:, :, :20], v[:, :, :20], 8**-0.5)[1].store
    rank = scorer.rank(full.with_score(scorer.observe(full, q[:, :, :20], 8**-0.5)), 10)
    assert store.count.tolist() == head_budgets(rank, 10, 0.2).tolist() and store.count[0, 0] != store.count[0, 1]
    for h in range(2):  # each head keeps its own best tokens by the scorer's rank
        c = int(store.count[0, h])
        assert store.pos[0, h, :c].tolist() == sorted(rank[0, h].topk(c).indices.tolist())
    for i, t in enumerate(range(20, 32)):
        s = states[i].store
        for h in range(4):
            c = int(s.count[0, h // 2])
            keys = torch.cat([s.pos[0, h // 2, :c].long(), torch.tensor([t])])
            direct = torch.softmax(q[0, h, t] @ k[0, h // 2, keys].T / 8**0.5, -1) @ v[0, h // 2, keys]
            torch.testing.assert_close(out[0, h, t], direct)
        assert s.count.sum() == 20 + 2 * i and s.length == 20 + i


def test_razor_keeps_retrieval_heads_whole_and_compensates_the_others():
    q, k, v = qkv()
    policy = RazorAttention(8, retrieval=torch.tensor([[False, True]]), sinks=2)
    out, states = run(policy, q, k, v, prompt_len=20)
    assert states[0].store.count.tolist() == [[8, 20]]
    kept = [0, 1, 15, 16, 17, 18, 19]  # sinks, the compensation token's place, the window of 5
    assert states[0].store.pos[0, 0, :8].tolist() == [0, 1, 14] + kept[2:]
    assert states[0].store.pos[0, 1].tolist() == list(range(20))
    for i, t in enumerate(range(20, 32)):
        for h in range(4):
            if h // 2 == 1:
                keys = torch.arange(t + 1)
                direct = torch.softmax(q[0, h, t] @ k[0, 1, keys].T / 8**0.5, -1) @ v[0, 1, keys]
            else:
                keys = torch.tensor(kept + list(range(20, t + 1)))
                kc, vc = k[0, 0, 2:15].mean(0), v[0, 0, 2:15].mean(0)  # 13 dropped tokens, one compensation token
                e = torch.exp(q[0, h, t] @ k[0, 0, keys].T / 8**0.5)
                ec = 13 * torch.exp(q[0, h, t] @ kc / 8**0.5)
                direct = (e @ v[0, 0, keys] + ec * vc) / (e.sum() + ec)
            torch.testing.assert_close(out[0, h, t], direct)


def test_retrieval_scores_find_echo_and_induction_heads():
    period, n = 4, 8
    w = torch.full((1, 3, n, n), 0.0)
    for i in range(n):
        w[0, 0, i, max(0, i - period)] = 1.0  # echo
        w[0, 1, i, min(i, max(0, i - period + 1))] = 1.0  # induction
        w[0, 2, i, i] = 1.0  # local
    echo, induction = retrieval_scores(w, period)
    assert echo.tolist() == [1.0, 0.0, 0.0] and induction.tolist() == [0.0, 1.0, 0.0]
    heads = retrieval_heads(echo[None], induction[None], kv_heads=3, induction_share=0.3, echo_share=0.3)
    assert heads.tolist() == [[True, True, False]]


def test_head_wise_policies_check_their_inputs():
    with pytest.raises(ValueError, match="when='prefill'"):
        AdaKV(StreamingLLM(10))
    with pytest.raises(ValueError, match="alpha"):
        AdaKV(SnapKV(10), alpha=1.5)
    with pytest.raises(TypeError, match="retrieval"):
        RazorAttention(8, retrieval=[[True]])
    with pytest.raises(ValueError, match="kv heads"):
        run(RazorAttention(8, retrieval=torch.tensor([[True]])), *qkv(), prompt_len=20)
    with pytest.raises(ValueError, match="compensation"):
        RazorAttention(3, retrieval=torch.tensor([[True, False]]), sinks=2).budget(0, 20)
    assert math.isfinite(RazorAttention(0.5, retrieval=torch.ones(1, 2, dtype=torch.bool)).budget(0, 20))


def test_head_wise_policies_inside_hf_generate():
    pytest.importorskip("transformers")
    from transformers import DynamicCache

    from attnkit.cache import Cache

    from .helpers import prompt, tiny_llama

    model, ids = tiny_llama(), prompt()
    everything = RazorAttention(8, retrieval=torch.ones(2, 2, dtype=torch.bool))  # every head a retrieval head
    cache = Cache(everything, model=model)
    assert model.config._attn_implementation == "attnkit_cache"
    out = model.generate(ids, max_new_tokens=8, do_sample=False, cache=cache)
    cache.close()
    assert model.config._attn_implementation == "sdpa"
    assert torch.equal(out, model.generate(ids, max_new_tokens=8, do_sample=False, cache=DynamicCache(config=model.config)))
    cache = Cache(AdaKV(SnapKV(12, window=4)), model=model)
    model.generate(ids, max_new_tokens=8, do_sample=False, cache=cache)
    cache.close()
    assert all(int(layer.store.count.sum()) == 2 * (12 + 7) for layer in cache.layers)
    with pytest.raises(ValueError, match="model="):
        Cache(RazorAttention(8, retrieval=torch.ones(2, 2, dtype=torch.bool)))
