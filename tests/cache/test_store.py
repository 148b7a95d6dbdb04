"""The cache itself: exact without compression, the budget in tokens and bytes, decode over the kept keys, values."""
import pytest
import torch

import attnkit
from attnkit.cache import H2O, KeyNorm, KVState, NoCompression, SnapKV, StreamingLLM, TOVA

from .helpers import qkv, run

POLICIES = [StreamingLLM(10, sinks=2), H2O(10, recent=4), TOVA(10), KeyNorm(10), SnapKV(12, window=4, kernel=3)]


def test_no_compression_is_plain_causal_attention_in_pieces():
    q, k, v = qkv()
    out, states = run(NoCompression(), q, k, v, prompt_len=20)
    full = attnkit.attention(q, k, v, "softmax", causal=True, form="reference")
    torch.testing.assert_close(out, full)
    assert states[-1].length == 32 and states[-1].store.used == 32


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
def test_cache_length_and_bytes_equal_the_budget_after_compression(policy):
    q, k, v = qkv()
    _, states = run(policy, q, k, v, prompt_len=20)
    budget = policy.budget(0, 20)
    token_bytes = 2 * (2 * 8 * 8 + 4)  # kv heads x (key + value float64 + int32 position)
    for i, state in enumerate(states):
        expect = budget + (i if policy.when == "prefill" else 0)  # SnapKV appends decoded tokens
        assert state.store.used == expect and state.nbytes() == expect * token_bytes
        assert state.length == 20 + i


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
def test_decode_after_eviction_is_attention_over_the_kept_positions(policy):
    q, k, v = qkv()
    out, states = run(policy, q, k, v, prompt_len=20)
    for i, t in enumerate(range(20, 32)):
        kept = states[i].store.pos[0]  # (Hkv, L): positions each kv head kept before token t
        for h in range(4):
            keys = torch.cat([kept[h // 2].long(), torch.tensor([t])])
            s = (q[0, h, t] @ k[0, h // 2, keys].T) / 8**0.5
            direct = torch.softmax(s, -1) @ v[0, h // 2, keys]
            torch.testing.assert_close(out[0, h, t], direct)


def test_kept_keys_are_the_stored_keys_at_their_positions():
    q, k, v = qkv()
    _, states = run(H2O(10, recent=3), q, k, v, prompt_len=20)
    store = states[-1].store
    idx = store.pos.long()
    torch.testing.assert_close(store.k, k.gather(2, idx[..., None].expand(-1, -1, -1, 8)))
    torch.testing.assert_close(store.v, v.gather(2, idx[..., None].expand(-1, -1, -1, 8)))


def test_a_returned_state_never_changes_because_of_a_later_call():
    q, k, v = qkv()
    state = KVState(StreamingLLM(12, sinks=2))
    _, s1 = attnkit.attention(q[:, :, :20], k[:, :, :20], v[:, :, :20], "softmax", causal=True, state=state,
                              return_state=True)
    snapshot = (s1.store.k.clone(), s1.store.v.clone(), s1.store.pos.clone(), s1.length)
    _, s2 = attnkit.attention(q[:, :, 20:21], k[:, :, 20:21], v[:, :, 20:21], "softmax", causal=True, state=s1,
                              return_state=True)
    s2_snapshot = (s2.store.k.clone(), s2.store.pos.clone())
    _, s3 = attnkit.attention(q[:, :, 21:22], -k[:, :, 21:22], v[:, :, 21:22], "softmax", causal=True, state=s1,
                              return_state=True)  # a second continuation of the same state
    for before, now in zip(snapshot, (s1.store.k, s1.store.v, s1.store.pos, s1.length)):
        assert torch.equal(torch.as_tensor(before), torch.as_tensor(now))
    assert torch.equal(s2_snapshot[0], s2.store.k) and torch.equal(s2_snapshot[1], s2.store.pos)


def test_appends_reuse_the_buffer_amortised():
    q, k, v = qkv(n=64)
    state, buffers = KVState(), set()
    for t in range(64):
        _, state = attnkit.attention(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], "softmax", causal=True,
                                     state=state, return_state=True)
        buffers.add(id(state.store._buffer))
    assert len(buffers) <= 12  # geometric growth: O(log N) buffers for N appends


def test_rope_positions_continue_from_the_tokens_consumed_not_kept():
    from attnkit.positional import RoPE

    q, k, v = qkv(n=24)
    rope = RoPE(8)
    state = KVState(StreamingLLM(8, sinks=2))
    _, state = attnkit.attention(q[:, :, :16], k[:, :, :16], v[:, :, :16], "softmax", causal=True, position=rope,
                                 state=state, return_state=True)
    out, state = attnkit.attention(q[:, :, 16:17], k[:, :, 16:17], v[:, :, 16:17], "softmax", causal=True,
                                   position=rope, state=state, return_state=True)
    qr, kr = rope.apply(q, k, q_offset=0, k_offset=0)
    keys = torch.tensor([0, 1, 10, 11, 12, 13, 14, 15, 16])  # sinks + recent window + the new token
    s = (qr[0, :, 16:17] @ kr[0, :, keys].repeat_interleave(2, 0).transpose(-1, -2)) / 8**0.5
    torch.testing.assert_close(out[0], torch.softmax(s, -1) @ v[0, :, keys].repeat_interleave(2, 0))


def test_slack_evicts_once_every_slack_plus_one_tokens_back_to_the_budget():
    q, k, v = qkv(n=60)
    _, states = run(StreamingLLM(10, sinks=2, slack=4), q, k, v, prompt_len=20)
    held = [s.store.used for s in states]
    assert held[0] == 10 and max(held) == 14 and held[1:6] == [11, 12, 13, 14, 10]
    assert all(s.store.capacity == 15 for s in states)  # the budget + slack + the token being added


def test_pyramid_budgets_decrease_with_depth_around_the_mean():
    from attnkit.cache import PyramidKV

    policy = PyramidKV(SnapKV(100, window=4), layers=5, beta=10)
    budgets = [policy.budget(layer, 1000) for layer in range(5)]
    assert budgets == [190, 145, 100, 55, 10] and sum(budgets) == 500
    assert PyramidKV(SnapKV(0.75, window=4), layers=4).budget(0, 128) == 128  # a share above the prompt: all of it
