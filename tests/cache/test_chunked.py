"""Chunked prefill: compress as the prompt's chunks arrive, never holding much more than the budget."""
import math
from types import SimpleNamespace

import pytest
import torch

import attnkit
from attnkit.cache import (H2O, KIVI, AdaKV, ExpectedAttention, KeyNorm, KVState, NoCompression, RazorAttention, SnapKV,
                           StreamingLLM)
from attnkit.cache.chunked import prefill

from .helpers import prompt, qkv, tiny_llama


def chunked(policy, q, k, v, n, chunk):
    state = KVState(policy, prompt=n)
    sizes = []
    for lo in range(0, n, chunk):
        s = slice(lo, min(n, lo + chunk))
        _, state = attnkit.attention(q[:, :, s], k[:, :, s], v[:, :, s], "softmax", causal=True, state=state,
                                     return_state=True)
        sizes.append(state.store.allocated_bytes())
    return state, sizes


@pytest.mark.parametrize("policy", [StreamingLLM(8, sinks=2), KeyNorm(8)], ids=repr)
def test_exact_policies_keep_in_chunks_what_one_call_keeps(policy):
    q, k, v = qkv(n=30)
    whole = KVState(policy).step(q, k, v, 8**-0.5)[1].store
    state, sizes = chunked(policy, q, k, v, 30, chunk=4)
    assert torch.equal(state.store.pos, whole.pos)
    torch.testing.assert_close(state.store.k, whole.k)
    per_token = 2 * (2 * 8 * 8 + 4)
    assert max(sizes) <= (8 + 16) * per_token  # budget + room for a chunk (at least 16 slots), never the prompt


@pytest.mark.parametrize("chunk", [3, 7])
def test_razor_in_chunks_keeps_what_one_call_keeps_with_a_running_compensation_token(chunk):
    q, k, v = qkv(n=30)
    policy = RazorAttention(9, retrieval=torch.tensor([[False, True]]), sinks=2)
    whole = KVState(policy).step(q, k, v, 8**-0.5)[1].store
    state, sizes = chunked(policy, q, k, v, 30, chunk=chunk)
    assert state.store.count.tolist() == whole.count.tolist() == [[9, 30]]
    assert torch.equal(state.store.pos, whole.pos)
    torch.testing.assert_close((state.store.k, state.store.v, state.store.bias), (whole.k, whole.v, whole.bias))
    assert whole.bias[0, 0, 2] == pytest.approx(math.log(30 - 2 - 6))  # stands for the 22 tokens dropped
    q, k, v = qkv(n=90)
    none = RazorAttention(9, retrieval=torch.tensor([[False, False]]), sinks=2)
    held = [max(chunked(none, q, k, v, n, chunk=chunk)[1]) for n in (30, 90)]
    assert held[0] == held[1]  # the budget and a chunk, whatever the prompt's length


def test_adakv_in_chunks_ranks_each_chunks_scores_jointly_and_holds_the_layers_budget():
    q, k, v = qkv(n=90)
    k[:, 0] *= 4  # kv head 0's attention is concentrated, head 1's spread out
    policy = AdaKV(SnapKV(10, window=4, kernel=3), alpha=0.2)
    held = []
    for n in (30, 90):
        state, sizes = chunked(policy, q, k, v, n, chunk=7)
        store = state.store
        assert int(store.count.sum()) == 2 * 10 and store.count.min() >= 2 + 4 and state.length == n
        assert (store.pos[..., :4] >= 0).all() and store.pos[0, 0, store.count[0, 0] - 4:].tolist() == list(range(n - 4, n))
        held.append(max(sizes))
    assert held[0] == held[1]  # the budget and a chunk, whatever the prompt's length


@pytest.mark.parametrize("policy", [AdaKV(SnapKV(256, window=4, kernel=3)),
                                    RazorAttention(256, retrieval=torch.tensor([[False, False]]), sinks=2)], ids=repr)
def test_head_wise_policies_leave_no_more_room_after_a_chunked_prefill_than_a_chunk(policy):
    q, k, v = qkv(n=600)
    store = chunked(policy, q, k, v, 600, chunk=7)[0].store
    room = store._pool.capacity * store.page - int(store.count.sum())
    assert room < store.count.numel() * (16 + store.page)  # a chunk's 16 slots per row (and page rounding), not keep / 8


def test_approximate_policies_hold_their_budget_and_whole_prompt_ones_are_refused():
    q, k, v = qkv(n=30)
    for policy in (H2O(8, recent=2), SnapKV(8, window=2, kernel=3)):
        state, _ = chunked(policy, q, k, v, 30, chunk=5)
        assert state.store.used == 8 and state.length == 30
    expected = ExpectedAttention(8, rotate=attnkit.positional.RoPE(8).rotate, future=4)
    with pytest.raises(ValueError, match="whole prompt"):  # the ragged rows cannot carry its query statistics
        chunked(AdaKV(expected), q, k, v, 30, chunk=5)
    state, _ = chunked(KIVI(4, group=8, residual=8), q, k, v, 30, chunk=5)  # quantised as they arrive
    whole = KVState(KIVI(4, group=8, residual=8)).step(q, k, v, 8**-0.5)[1].store
    torch.testing.assert_close(state.store.k, whole.k)


def test_expected_attention_in_chunks_scores_with_the_running_statistics_of_every_query_seen():
    q, k, v = qkv(n=30)
    rope = attnkit.positional.RoPE(8)
    q, k = rope.rotate(q, torch.arange(30)), rope.rotate(k, torch.arange(30))
    policy = ExpectedAttention(8, rotate=rope.rotate, future=4, sinks=2)
    whole = KVState(policy).step(q, k, v, 8**-0.5)[1].store
    one_chunk = chunked(policy, q, k, v, 30, chunk=30)[0].store  # the prompt fits one chunk: the one-call choice
    assert torch.equal(one_chunk.pos, whole.pos) and one_chunk.pos[0, 0, :2].tolist() == [0, 1]
    state, sizes = chunked(policy, q, k, v, 30, chunk=7)
    assert state.store.used == 8 and max(sizes) <= (8 + 16) * 2 * (2 * 8 * 8 + 4)
    stats = state.store.score  # exact for the whole prompt after the last chunk
    mean, cov = stats.moments()
    pre = rope.rotate(q.double(), -torch.arange(30))[:, :, 2:]
    torch.testing.assert_close(mean, pre.mean(dim=2))
    torch.testing.assert_close(cov[0, 1], torch.cov(pre[0, 1].T, correction=0))
    # the last chunk ranks what the earlier chunks kept (= a 28-token prompt's choice) and its own 2 tokens
    before = chunked(policy, q[:, :, :28], k[:, :, :28], v[:, :, :28], 28, chunk=7)[0].store.pos
    for h in range(2):
        candidates = torch.cat([before[0, h, 2:], torch.tensor([28, 29], dtype=before.dtype)]).long()
        rows = SimpleNamespace(k=k[:, h : h + 1, candidates], v=v[:, h : h + 1, candidates])
        score = policy.scores(rows, *(None if m is None else m[:, 2 * h : 2 * h + 2] for m in policy.future_moments(stats, 30)))
        best = candidates[score[0, 0].topk(6).indices].sort().values
        assert state.store.pos[0, h, 2:].tolist() == best.tolist()


def test_chunked_prefill_in_generate_evicts_in_place_and_keeps_what_one_call_keeps():
    model, ids = tiny_llama(), prompt(48)
    done = prefill(model, ids, StreamingLLM(16, sinks=4), chunk=8)
    whole = attnkit.cache.Cache(StreamingLLM(16, sinks=4))
    model(ids, cache=whole)
    layer = done.cache.layers[0]
    assert layer.pending is None  # the last chunk's eviction, applied once the prefill was done
    store = layer.store
    assert store.pos[0, 0].tolist() == [0, 1, 2, 3] + list(range(36, 48))
    torch.testing.assert_close(store.k, whole.layers[0].store.k)  # layer 0's keys depend on the tokens alone
    per_token = 2 * (2 * 16 * 4) + 2 * 4  # 2 kv heads x (key + value of 16 float32 + int32 position)
    assert done.peak_bytes == 2 * (16 + 8) * per_token  # each layer one buffer of budget + chunk
    cache = attnkit.cache.Cache(StreamingLLM(16, sinks=4), prompt=48)  # transformers' own chunked prefill
    out = model.generate(ids, max_new_tokens=4, do_sample=False, cache=cache, prefill_chunk_size=8)
    assert out.shape == (1, 52) and cache.get_seq_length() == 51
    # the decoded tokens' evictions move the kept tokens to the front of the prefill buffers: one each
    assert cache.peak_bytes == 2 * 24 * per_token
    assert cache.layers[1].store.pos[0, 0].tolist() == [0, 1, 2, 3] + list(range(39, 51))


def tiny_lm(schedule="FF"):
    from attnkit.models import DecoderLM, ModelConfig

    torch.manual_seed(0)
    return DecoderLM(ModelConfig(vocab_size=97, dim=32, heads=4, kv_heads=2, schedule=schedule)).eval()


PER_TOKEN = 2 * (2 * 8 * 4 + 4)  # bytes per token of a tiny_lm layer: 2 kv heads x (key + value of 8 float32 + position)


def test_chunked_prefill_of_an_attnkit_lm_bounds_its_memory():
    lm = tiny_lm()
    ids = prompt(64)
    done = prefill(lm, ids, KeyNorm(16), chunk=16)
    full = prefill(lm, ids, NoCompression(), chunk=64)
    assert all(s.store.used == 16 and s.length == 64 for s in done.cache)
    assert done.peak_bytes == 2 * 32 * PER_TOKEN  # each layer one buffer of budget + chunk, evicted in place
    assert full.peak_bytes == 2 * 64 * PER_TOKEN
    torch.testing.assert_close(full.logits, lm(ids)[:, -1])
    with pytest.raises(ValueError, match="chunk"):
        prefill(lm, ids, KeyNorm(16), chunk=0)


def test_layers_of_different_lengths_prefill_in_chunks_inside_generate():
    from attnkit.cache import Cache, PyramidKV

    model, ids = tiny_llama(), prompt(48)
    policy = PyramidKV(StreamingLLM(16, sinks=2), layers=2, beta=4)  # layer 0 keeps 28 tokens, layer 1 keeps 4
    with pytest.raises(ValueError, match="per layer"):  # one transformers mask cannot fit both layers
        Cache(policy, prompt=48)
    cache = Cache(policy, model=model, prompt=48)
    out = model.generate(ids, max_new_tokens=3, do_sample=False, cache=cache, prefill_chunk_size=8)
    cache.close()
    assert out.shape == (1, 51) and [layer.store.used for layer in cache.layers] == [28, 4]


@pytest.mark.parametrize("policy", [KeyNorm(16), SnapKV(16, window=4, kernel=3), H2O(16, recent=4),
                                    ExpectedAttention(16, rotate=attnkit.positional.RoPE(8).rotate, future=4),
                                    KIVI(4, group=8, residual=8),
                                    KIVI(4, group=8, residual=8, under=SnapKV(16, window=4, kernel=3)),
                                    AdaKV(SnapKV(16, window=4, kernel=3))], ids=repr)
def test_an_attnkit_lm_prefilled_in_place_keeps_what_states_as_values_keep(policy):
    from attnkit.cache import layer_states

    lm, ids = tiny_lm(), prompt(64)
    done = prefill(lm, ids, policy, chunk=16)
    states = layer_states(policy, 2, prompt=64)
    for lo in range(0, 64, 16):  # the same chunks, every state a value (each eviction copies)
        logits, states = lm(ids[:, lo : lo + 16], state=states, return_state=True)
    for mine, theirs in zip(done.cache, states):
        assert torch.equal(mine.store.pos, theirs.store.pos)
        torch.testing.assert_close((mine.store.k, mine.store.v), (theirs.store.k, theirs.store.v), rtol=0, atol=0)
    torch.testing.assert_close(done.logits, logits[:, -1])  # the head applied to one row, not the chunk's rows


def test_the_states_a_chunked_prefill_returns_are_values():
    lm, ids = tiny_lm(), prompt(64)
    done = prefill(lm, ids, KeyNorm(16), chunk=16)  # KeyNorm also evicts while decoding
    before = [(s.store.k.clone(), s.store.v.clone(), s.store.pos.clone()) for s in done.cache]
    token = prompt(1, seed=2)
    first, after = lm(token, state=done.cache, return_state=True)
    second, _ = lm(token, state=done.cache, return_state=True)  # the same states continued again
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert all(s.store.used == 16 and s.length == 65 for s in after)
    for state, (k, v, pos) in zip(done.cache, before):
        assert torch.equal(state.store.k, k) and torch.equal(state.store.v, v) and torch.equal(state.store.pos, pos)


def test_pyramidkv_prefilled_in_chunks_holds_each_layers_budget_plus_a_chunk_once():
    from attnkit.cache import PyramidKV

    lm, ids = tiny_lm(), prompt(64)
    policy = PyramidKV(KeyNorm(16), layers=2, beta=4)  # layer 0 keeps 28 tokens, layer 1 keeps 4
    done = prefill(lm, ids, policy, chunk=8)
    assert [s.store.used for s in done.cache] == [28, 4]
    assert done.peak_bytes == (28 + 8 + 4 + 8) * PER_TOKEN  # no layer holds its old and its evicted buffer at once


def test_a_prompt_prefilled_in_one_chunk_keeps_a_buffer_of_its_budget_not_of_the_prompt():
    lm, ids = tiny_lm(), prompt(64)
    done = prefill(lm, ids, KeyNorm(16), chunk=64)
    assert all(s.store.used == 16 and s.store.capacity < 64 for s in done.cache)


def test_kivi_under_a_policy_quantises_in_generate_after_evicting_in_place(monkeypatch):
    from attnkit.cache import Cache, CacheLayer

    model, ids = tiny_llama(), prompt(64)

    def run():
        cache = Cache(KIVI(4, group=8, residual=8, under=SnapKV(32, window=4, kernel=3)), model=model, prompt=64)
        out = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, cache=cache,
                             prefill_chunk_size=16, output_scores=True, return_dict_in_generate=True)
        cache.close()
        return out, cache

    moved, in_place = run()
    monkeypatch.setattr(CacheLayer, "_evicts_in_place", lambda self, store, chosen: False)  # copy, then quantise
    copied, copying = run()
    assert torch.equal(moved.sequences, copied.sequences)
    for ours, theirs in zip(moved.scores, copied.scores):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    for ours, theirs in zip(in_place.layers, copying.layers):
        assert torch.equal(ours.store.pos, theirs.store.pos)
        torch.testing.assert_close((ours.store.k, ours.store.v), (theirs.store.k, theirs.store.v), rtol=0, atol=0)
    # the last chunk's kept tokens are quantised out of the layer's one buffer, not out of a copy of them
    assert in_place.peak_bytes < copying.peak_bytes
