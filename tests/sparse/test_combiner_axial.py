"""Combiner-Axial: full causal attention (every earlier key gets weight), softmax when one row holds
everything, the row-then-column factorisation written out by hand for a tiny case, a state that is a value."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.families.combiner_axial import axial_weights

from .combiner_checks import assert_full_attention, assert_state_is_a_value, qkv


def test_every_earlier_key_gets_weight_and_rows_sum_to_one():
    q, k, v = qkv()
    assert_full_attention(axial_weights(q, k, v, causal=True, mask=None, scale=0.3, row_len=4))


def test_one_row_is_causal_softmax():
    q, k, v = qkv()
    out = attnkit.attention(q, k, v, "combiner_axial", causal=True, row_len=32)
    torch.testing.assert_close(out, attnkit.attention(q, k, v, "softmax", causal=True))


def test_the_factorisation_by_hand():
    """Rows of 2: query 3 = (row 1, col 1) attends to 2 and 3 directly, and to row 0 through token 1 = (0, 1),
    whose row attention over tokens 0 and 1 spreads the weight and makes the abstraction key."""
    q, k, v = qkv(n=4, heads=1)
    q, k = q[0, 0], k[0, 0]
    s = 0.5
    a = torch.softmax(s * q[1] @ k[:2].T, dim=0)  # token (0, 1)'s row attention
    k_bar = a @ k[:2]
    logits = torch.stack([s * q[3] @ k[2], s * q[3] @ k[3], s * q[3] @ k_bar])
    p = torch.softmax(logits, dim=0)
    expected = torch.stack([p[2] * a[0], p[2] * a[1], p[0], p[1]])
    w = axial_weights(*qkv(n=4, heads=1), causal=True, mask=None, scale=s, row_len=2)
    torch.testing.assert_close(w[0, 0, 3], expected)


def test_a_returned_state_is_a_value_and_bad_row_len_is_refused():
    q, k, v = qkv(n=12)
    assert_state_is_a_value("combiner_axial", q, k, v, 7, row_len=4)
    with pytest.raises(ValueError, match="row_len"):
        attnkit.attention(q, k, v, "combiner_axial", causal=True, row_len=0)
    with pytest.raises(ValueError, match="support"):
        attnkit.attention(q, k, v, "combiner_axial", causal=False)
