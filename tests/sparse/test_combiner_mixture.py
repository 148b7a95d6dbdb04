"""Combiner-Mixture: full causal attention (every earlier key gets weight), softmax when one row holds
everything, the two plans written out by hand for a tiny case, decoding token by token equal to one
call, a state that is a value."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.families.combiner_mixture import mixture_weights


def _qkv(n=23, heads=2, kv_heads=1, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, n, d, generator=g, dtype=torch.float64)
    k = torch.randn(1, kv_heads, n, d, generator=g, dtype=torch.float64)
    v = torch.randn(1, kv_heads, n, d, generator=g, dtype=torch.float64)
    return q, k, v


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_every_earlier_key_gets_weight_and_rows_sum_to_one(pooling):
    q, k, v = _qkv()
    w = mixture_weights(q, k, v, causal=True, mask=None, scale=0.3, row_len=4, pooling=pooling)
    visible = torch.ones(23, 23, dtype=torch.bool).tril()
    assert (w[..., visible] > 0).all() and (w[..., ~visible] == 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))


def test_one_row_is_causal_softmax():
    q, k, v = _qkv()
    out = attnkit.attention(q, k, v, "combiner_mixture", causal=True, row_len=32)
    torch.testing.assert_close(out, attnkit.attention(q, k, v, "softmax", causal=True))


def test_the_two_plans_by_hand():
    """Rows of 2, query 5 = (row 2, col 1): both plans attend to 4, 5 (its row) and 1, 3 (its column) directly.
    Vertical: column 0 above, {0, 2}, through one abstraction. Horizontal: rows 0 and 1 less column 1 are the
    single tokens 0 and 2, so that plan is plain softmax. The mixture averages the two."""
    q, k, v = _qkv(n=6, heads=1)
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
    q, k, v = _qkv(n=19, heads=4, kv_heads=2)
    whole = attnkit.attention(q, k, v, "combiner_mixture", causal=True, row_len=4, pooling="mean")
    state, outs = None, []
    for i in range(19):
        out, state = attnkit.attention(q[:, :, i:i + 1], k[:, :, i:i + 1], v[:, :, i:i + 1], "combiner_mixture",
                                       causal=True, row_len=4, pooling="mean", state=state, return_state=True)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=2), whole)
    _, state = attnkit.attention(q[:, :, :7], k[:, :, :7], v[:, :, :7], "combiner_mixture", causal=True, row_len=4,
                                 state=None, return_state=True)
    tail = q[:, :, 7:], k[:, :, 7:], v[:, :, 7:]
    first, _ = attnkit.attention(*tail, "combiner_mixture", causal=True, row_len=4, state=state, return_state=True)
    again, _ = attnkit.attention(*tail, "combiner_mixture", causal=True, row_len=4, state=state, return_state=True)
    torch.testing.assert_close(first, again, rtol=0, atol=0)


def test_bad_row_len_and_non_causal_calls_are_refused():
    q, k, v = _qkv(n=12)
    with pytest.raises(ValueError, match="row_len"):
        attnkit.attention(q, k, v, "combiner_mixture", causal=True, row_len=0)
    with pytest.raises(ValueError, match="support"):
        attnkit.attention(q, k, v, "combiner_mixture", causal=False)
