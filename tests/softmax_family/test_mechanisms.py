"""Paper-specific properties of the softmax-family mechanisms, beyond the generated suite."""
from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit.scores.normalisers import Normaliser
from attnkit.scores.relative import skew
from attnkit.scores.t5_bias import t5_buckets


def qkv(n=9, nk=None, h=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    nk = nk or n
    return (torch.randn(1, h, n, d, generator=g, dtype=torch.float64),
            torch.randn(1, h, nk, d, generator=g, dtype=torch.float64),
            torch.randn(1, h, nk, d, generator=g, dtype=torch.float64))


def test_sigmoid_bias_is_minus_log_n_and_needs_fixed_n_incrementally():
    q, k, v = qkv()
    s = q @ k.transpose(-1, -2) / math.sqrt(8)
    expected = torch.sigmoid(s - math.log(9)) @ v
    assert torch.allclose(attnkit.attention(q, k, v, "sigmoid"), expected)  # n defaults to the key count
    assert torch.allclose(attnkit.attention(q, k, v, "sigmoid", n=9), expected)
    with pytest.raises(ValueError, match="fixed n"):
        attnkit.attention(q, k, v, "sigmoid", causal=True, return_state=True)
    with pytest.raises(ValueError, match="n must be None or an int >= 1"):
        attnkit.attention(q, k, v, "sigmoid", n=0)


def test_cog_weights_are_signed_and_abs_sums_to_one():
    s = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    w = Normaliser("cog", "exp", signed=True).weights(s, None)
    assert torch.allclose(w.abs().sum(-1), torch.ones(2, 3, 5, dtype=torch.float64))
    assert torch.equal(torch.sign(w), torch.sign(s))


def test_rela_can_attend_to_nothing_and_normalises_heads():
    q, k, v = qkv()
    out = attnkit.attention(-q.abs(), k.abs(), v, "rela")  # every score negative
    assert out.abs().max() == 0
    out = attnkit.attention(q, k, v, "rela")
    rms = out.pow(2).mean(dim=(1, 3)).sqrt()
    assert torch.allclose(rms[rms > 0], torch.ones_like(rms[rms > 0]), atol=1e-6)


def test_normalised_attention_rows_have_mean_shift_and_std_gain():
    s = torch.randn(1, 2, 4, 6, dtype=torch.float64)
    gain, shift = torch.tensor([2.0, 0.5], dtype=torch.float64), torch.tensor([0.1, -0.3], dtype=torch.float64)
    w = Normaliser("n", "standardise", gain=gain, shift=shift, eps=0.0).weights(s, None)
    assert torch.allclose(w.mean(-1), shift[None, :, None].expand(1, 2, 4))
    assert torch.allclose(w.std(-1, unbiased=False), gain[None, :, None].expand(1, 2, 4))


def test_normalised_chunked_is_stable_for_large_score_offsets():
    q, k, v = qkv(n=40, d=16)
    q32, k32, v32 = (q + 30.0).float(), (k + 30.0).float(), v.float()  # scores ~ 200 +- a few
    ref = attnkit.attention(q + 30.0, k + 30.0, v, "normalised", form="reference", causal=True)
    fast = attnkit.attention(q32, k32, v32, "normalised", causal=True, q_chunk=8, kv_chunk=5)
    ref32 = attnkit.attention(q32, k32, v32, "normalised", form="reference", causal=True)
    assert (fast.double() - ref).abs().max() <= 10 * (ref32.double() - ref).abs().max() + 1e-6


def test_lssar_drops_weights_below_uniform():
    q, k, v = qkv(n=12)
    eye = torch.eye(12, dtype=torch.float64)[None, None].expand(1, 2, 12, 12)
    w = attnkit.attention(q, k, eye, "lssar", form="reference", causal=True)  # v = identity: rows are weights
    lssa = attnkit.attention(q, k, eye, "lssa", form="reference", causal=True)
    counts = torch.arange(1, 13, dtype=torch.float64)[:, None]
    below = (lssa * counts <= 1.0) & (counts > 3)
    assert w[below.expand_as(w)].abs().max() == 0
    assert torch.allclose(w.sum(-1), torch.ones(1, 2, 12, dtype=torch.float64))
    with pytest.raises(ValueError, match="p must be a float >= 1"):
        attnkit.attention(q, k, v, "lssar", p=0.5)


def test_selective_temperatures():
    q, k, v = qkv()
    plain = attnkit.attention(q, k, v, "softmax", causal=True)
    assert torch.allclose(attnkit.attention(q, k, v, "selective", causal=True), plain)
    t = torch.full((1, 2, 9), 0.5, dtype=torch.float64)
    hotter = attnkit.attention(q, k, v, "softmax", causal=True, scale=1.5 / math.sqrt(8))
    assert torch.allclose(attnkit.attention(q, k, v, "selective", causal=True, query_temp=t), hotter)
    vt = torch.full((1, 2, 9), 2.0, dtype=torch.float64)
    assert torch.allclose(attnkit.attention(q, k, v, "selective", causal=True, value_temp=vt), 2 * plain)
    with pytest.raises(ValueError, match="query_temp must have shape"):
        attnkit.attention(q, k, v, "selective", query_temp=t[:, :, :3])


def test_t5_buckets_match_the_t5_scheme():
    rel = torch.tensor([-200, -20, -3, 0, 3, 20, 200])
    bi = t5_buckets(rel, bidirectional=True, num_buckets=32, max_distance=128)
    # 16 buckets per direction, 8 exact; log buckets: 8 + floor(log(d/8)/log(16) * 8)
    assert bi.tolist() == [15, 10, 3, 0, 19, 26, 31]
    uni = t5_buckets(rel, bidirectional=False, num_buckets=32, max_distance=128)
    # the future is bucket 0; 16 exact; 16 + floor(log(d/16)/log(8) * 16)
    assert uni.tolist() == [31, 17, 3, 0, 0, 0, 0]


def test_music_transformer_skew_moves_distances_to_keys():
    n_q, n_k = 4, 6
    qe = torch.arange(n_q * (n_q + n_k - 1)).reshape(n_q, n_q + n_k - 1)
    out = skew(qe, n_k)
    for i in range(n_q):
        for j in range(n_k):
            assert out[i, j] == qe[i, j + n_q - 1 - i]


def test_shaw_with_zero_table_is_softmax_and_bad_table_is_refused():
    q, k, v = qkv()
    table = torch.zeros(2, 9, 8, dtype=torch.float64)
    plain = attnkit.attention(q, k, v, "softmax", causal=True)
    for form in ("skew", "chunked", "reference"):
        assert torch.allclose(attnkit.attention(q, k, v, "shaw", causal=True, table=table, form=form), plain)
    with pytest.raises(ValueError, match="table"):
        attnkit.attention(q, k, v, "shaw", table=torch.zeros(2, 8, 8, dtype=torch.float64))


def test_cope_counts_gates_from_key_to_query():
    q, k, v = qkv(n=6)
    plain = attnkit.attention(q, k, v, "softmax", causal=True)
    zero = torch.zeros(8, 8, dtype=torch.float64)
    assert torch.allclose(attnkit.attention(q, k, v, "cope", causal=True, pos_emb=zero), plain)
    # k = 0: every gate is sigmoid(0) = 1/2, so key j sits at position (i - j + 1) / 2 from query i;
    # with e[p] chosen so that q . e[p] = p, the position logits are exactly that.
    q1 = torch.zeros(1, 1, 6, 8, dtype=torch.float64)
    q1[..., 0] = 1.0
    pos_emb = torch.zeros(8, 8, dtype=torch.float64)
    pos_emb[:, 0] = torch.arange(8, dtype=torch.float64)
    eye = torch.eye(6, dtype=torch.float64)[None, None]
    w = attnkit.attention(q1, torch.zeros_like(q1), eye, "cope", causal=True, pos_emb=pos_emb, form="reference")
    i, j = torch.meshgrid(torch.arange(6.0), torch.arange(6.0), indexing="ij")
    logits = ((i - j + 1) / 2).masked_fill(j > i, float("-inf")).double()
    assert torch.allclose(w[0, 0], torch.softmax(logits, dim=-1))
    with pytest.raises(ValueError, match="does not support"):
        attnkit.attention(q, k, v, "cope", pos_emb=zero)


def test_an_old_mechanism_name_says_the_new_one():
    q = torch.randn(1, 1, 2, 4)
    with pytest.raises(ValueError, match="'rela-gated' is now called 'rela_gated'"):
        attnkit.attention(q, q, q, "rela-gated")
