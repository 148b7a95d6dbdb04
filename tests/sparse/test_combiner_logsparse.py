"""Combiner-Logsparse: full causal attention (every earlier key gets weight), the dyadic partition
(one span per set bit), the factorisation written out by hand for a tiny case, decoding token by
token equal to one call, a state that is a value."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.families.combiner_logsparse import logsparse_partition, logsparse_weights


def _qkv(n=23, heads=2, kv_heads=1, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, n, d, generator=g, dtype=torch.float64)
    k = torch.randn(1, kv_heads, n, d, generator=g, dtype=torch.float64)
    v = torch.randn(1, kv_heads, n, d, generator=g, dtype=torch.float64)
    return q, k, v


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_every_earlier_key_gets_weight_and_rows_sum_to_one(pooling):
    q, k, v = _qkv()
    w = logsparse_weights(q, k, v, causal=True, mask=None, scale=0.3, pooling=pooling)
    visible = torch.ones(23, 23, dtype=torch.bool).tril()
    assert (w[..., visible] > 0).all() and (w[..., ~visible] == 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))


def test_the_partition_is_one_span_per_set_bit():
    direct, member, reached = logsparse_partition(40, "cpu")
    covered = direct.long() + reached.long() @ member.long()
    assert torch.equal(covered, torch.ones(40, 40, dtype=torch.long).tril())  # disjoint, and all of [0, i]
    popcount = torch.tensor([bin(i >> 1).count("1") for i in range(40)])
    assert torch.equal(reached.sum(1), popcount)
    assert member.shape[0] == sum(40 >> level for level in range(1, 6))


def test_the_factorisation_by_hand():
    """Query 6 = 110b attends to itself directly, to [4, 6) and to [0, 4) through their max-pooled abstractions."""
    q, k, v = _qkv(n=8, heads=1)
    Q, K = q[0, 0], k[0, 0]
    s = 0.5
    spans = [(4, 6), (0, 4)]
    within = [torch.softmax(s * Q[a:b].amax(0) @ K[a:b].T, dim=0) for a, b in spans]
    logits = torch.stack([s * Q[6] @ K[6]] + [s * Q[6] @ K[a:b].amax(0) for a, b in spans])
    p = torch.softmax(logits, dim=0)
    expected = torch.cat([p[2] * within[1], p[1] * within[0], p[:1], torch.zeros(1, dtype=torch.float64)])
    w = logsparse_weights(q, k, v, causal=True, mask=None, scale=s, pooling="max")
    torch.testing.assert_close(w[0, 0, 6], expected)


def test_decoding_token_by_token_equals_one_call_and_a_state_is_a_value():
    q, k, v = _qkv(n=21, heads=4, kv_heads=2)
    whole = attnkit.attention(q, k, v, "combiner_logsparse", causal=True, pooling="mean")
    state, outs = None, []
    for i in range(21):
        out, state = attnkit.attention(q[:, :, i:i + 1], k[:, :, i:i + 1], v[:, :, i:i + 1], "combiner_logsparse",
                                       causal=True, pooling="mean", state=state, return_state=True)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=2), whole)
    _, state = attnkit.attention(q[:, :, :7], k[:, :, :7], v[:, :, :7], "combiner_logsparse", causal=True,
                                 state=None, return_state=True)
    tail = q[:, :, 7:], k[:, :, 7:], v[:, :, 7:]
    first, _ = attnkit.attention(*tail, "combiner_logsparse", causal=True, state=state, return_state=True)
    again, _ = attnkit.attention(*tail, "combiner_logsparse", causal=True, state=state, return_state=True)
    torch.testing.assert_close(first, again, rtol=0, atol=0)


def test_bad_pooling_and_non_causal_calls_are_refused():
    q, k, v = _qkv(n=12)
    with pytest.raises(ValueError, match="pooling"):
        attnkit.attention(q, k, v, "combiner_logsparse", causal=True, pooling="sum")
    with pytest.raises(ValueError, match="support"):
        attnkit.attention(q, k, v, "combiner_logsparse", causal=False)
