"""Combiner-Mixture: full causal attention (every earlier key gets weight), softmax when one row holds
everything, the two plans written out by hand for a tiny case, decoding token by token equal to one
call, a state that is a value."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.families.combiner_mixture import mixture_weights

from .combiner_checks import assert_decoding_equals_one_call, assert_full_attention, assert_state_is_a_value, qkv


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_every_earlier_key_gets_weight_and_rows_sum_to_one(pooling):
    q, k, v = qkv()
    assert_full_attention(mixture_weights(q, k, v, causal=True, mask=None, scale=0.3, row_len=4, pooling=pooling))


def test_one_row_is_causal_softmax():
    q, k, v = qkv()
    out = attnkit.attention(q, k, v, "combiner_mixture", causal=True, row_len=32)
    torch.testing.assert_close(out, attnkit.attention(q, k, v, "softmax", causal=True))


def test_the_two_plans_by_hand():
    """Rows of 2, query 5 = (row 2, col 1): both plans attend to 4, 5 (its row) and 1, 3 (its column) directly.
    Vertical: column 0 above, {0, 2}, through one abstraction. Horizontal: rows 0 and 1 less column 1 are the
    single tokens 0 and 2, so that plan is plain softmax. The mixture averages the two."""
    q, k, v = qkv(n=6, heads=1)
    Q, K = q[0, 0], k[0, 0]
    s = 0.5
    column = [0, 2]
    within = torch.softmax(s * Q[column].amax(0) @ K[column].T, dim=0)
    logits = torch.stack([s * Q[5] @ K[j] for j in (1, 3, 4, 5)] + [s * Q[5] @ K[column].amax(0)])
    p = torch.softmax(logits, dim=0)
    vertical = torch.stack([p[4] * within[0], p[0], p[4] * within[1], p[1], p[2], p[3]])
    horizontal = torch.softmax(s * Q[5] @ K.T, dim=0)
    w = mixture_weights(q, k, v, causal=True, mask=None, scale=s, row_len=2, pooling="max")
    torch.testing.assert_close(w[0, 0, 5], (vertical + horizontal) / 2)


def test_decoding_token_by_token_equals_one_call_and_a_state_is_a_value():
    q, k, v = qkv(n=19, heads=4, kv_heads=2)
    assert_decoding_equals_one_call("combiner_mixture", q, k, v, row_len=4, pooling="mean")
    assert_state_is_a_value("combiner_mixture", q, k, v, 7, row_len=4)


def test_bad_row_len_and_non_causal_calls_are_refused():
    q, k, v = qkv(n=12)
    with pytest.raises(ValueError, match="row_len"):
        attnkit.attention(q, k, v, "combiner_mixture", causal=True, row_len=0)
    with pytest.raises(ValueError, match="support"):
        attnkit.attention(q, k, v, "combiner_mixture", causal=False)
