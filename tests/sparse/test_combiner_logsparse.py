"""Combiner-Logsparse: full causal attention (every earlier key gets weight), the dyadic partition
(one span per set bit), the factorisation written out by hand for a tiny case, decoding token by
token equal to one call, a state that is a value."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.families.combiner_logsparse import logsparse_partition, logsparse_weights

from .combiner_checks import assert_decoding_equals_one_call, assert_full_attention, assert_state_is_a_value, qkv


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_every_earlier_key_gets_weight_and_rows_sum_to_one(pooling):
    q, k, v = qkv()
    assert_full_attention(logsparse_weights(q, k, v, causal=True, mask=None, scale=0.3, pooling=pooling))


def test_the_partition_is_one_span_per_set_bit():
    direct, member, reached = logsparse_partition(40, "cpu")
    covered = direct.long() + reached.long() @ member.long()
    assert torch.equal(covered, torch.ones(40, 40, dtype=torch.long).tril())  # disjoint, and all of [0, i]
    popcount = torch.tensor([bin(i >> 1).count("1") for i in range(40)])
    assert torch.equal(reached.sum(1), popcount)
    assert member.shape[0] == sum(40 >> level for level in range(1, 6))


def test_the_factorisation_by_hand():
    """Query 6 = 110b attends to itself directly, to [4, 6) and to [0, 4) through their max-pooled abstractions."""
    q, k, v = qkv(n=8, heads=1)
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
    q, k, v = qkv(n=21, heads=4, kv_heads=2)
    assert_decoding_equals_one_call("combiner_logsparse", q, k, v, pooling="mean")
    assert_state_is_a_value("combiner_logsparse", q, k, v, 7)


def test_bad_pooling_and_non_causal_calls_are_refused():
    q, k, v = qkv(n=12)
    with pytest.raises(ValueError, match="pooling"):
        attnkit.attention(q, k, v, "combiner_logsparse", causal=True, pooling="sum")
    with pytest.raises(ValueError, match="support"):
        attnkit.attention(q, k, v, "combiner_logsparse", causal=False)
