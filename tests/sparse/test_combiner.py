"""Combiner-Fixed: full attention (every visible key gets weight), softmax when one segment holds
everything, the abstraction written out by hand for a tiny case, a state that is a value."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.families.combiner import combiner_weights

from .combiner_checks import assert_full_attention, assert_state_is_a_value, qkv


@pytest.mark.parametrize("causal", [True, False])
def test_every_visible_key_gets_weight_and_rows_sum_to_one(causal):
    q, k, v = qkv()
    assert_full_attention(combiner_weights(q, k, v, causal=causal, mask=None, scale=0.3, segment_size=4,
                                           pooling="mean"), causal)


@pytest.mark.parametrize("causal", [True, False])
def test_one_segment_holding_everything_is_softmax_attention(causal):
    q, k, v = qkv()
    out = attnkit.attention(q, k, v, "combiner", causal=causal, segment_size=32)
    torch.testing.assert_close(out, attnkit.attention(q, k, v, "softmax", causal=causal, form="reference"))


def test_the_last_query_of_two_segments_by_hand():
    """Causal, segments {0, 1} and {2, 3}: query 3 attends to keys 2, 3 directly and to segment 0 through
    its max-pooled key, which spreads its weight over keys 0, 1 by softmax(qbar . k) with qbar = max(q0, q1)."""
    q, k, v = (t[:, :1] for t in qkv(n=4, heads=1))
    out = attnkit.attention(q, k, v, "combiner", causal=True, segment_size=2, pooling="max", scale=1.0)
    q0, k0, v0 = q[0, 0], k[0, 0], v[0, 0]
    k_bar, q_bar = torch.maximum(k0[0], k0[1]), torch.maximum(q0[0], q0[1])
    scores = torch.stack([q0[3] @ k0[2], q0[3] @ k0[3], q0[3] @ k_bar])
    p = scores.softmax(0)
    v_bar = (k0[:2] @ q_bar).softmax(0) @ v0[:2]
    torch.testing.assert_close(out[0, 0, 3], p[0] * v0[2] + p[1] * v0[3] + p[2] * v_bar)


def test_a_returned_state_is_a_value():
    assert_state_is_a_value("combiner", *qkv(n=12), 6, segment_size=4)


def test_bad_pooling_is_refused_by_name():
    q, k, v = qkv(n=4)
    with pytest.raises(ValueError, match="pooling"):
        attnkit.attention(q, k, v, "combiner", pooling="median")
