"""The causal sliding-window kernel against dense attention with the window's boolean mask, in float64."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.kernels.positions import query_positions
from attnkit.kernels.sliding_window import add_gated_sliding_window, sliding_window_attention
from attnkit.reference import materialised_attention

# (batch, heads, kv_heads, q_len, kv_len, head_dim, value_dim, window, tile)
CASES = [
    (1, 4, 2, 37, 37, 8, 8, 8, 4),  # GQA, length not a multiple of the tile
    (2, 4, 1, 100, 100, 16, 12, 33, 16),  # window not a multiple of the tile, Dv != D
    (1, 2, 2, 5, 5, 8, 8, 512, 64),  # window and tile longer than the sequence
    (1, 8, 2, 300, 300, 16, 16, 64, 64),  # NSA's shape of GQA
    (1, 2, 1, 64, 64, 8, 8, 1, 16),  # each query sees only itself
    (1, 2, 2, 130, 130, 8, 8, 17, 17),
    (1, 4, 2, 7, 90, 8, 8, 20, 4),  # new queries against a longer cache
    (1, 2, 1, 1, 50, 8, 8, 64, 64),  # one decode query, the window past key 0
]


def _problem(B, H, Hkv, Nq, Nk, D, Dv, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Nq, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hkv, Nk, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hkv, Nk, Dv, generator=g, dtype=torch.float64)
    return q, k, v


def _window_mask(Nq, Nk, window):
    qpos = query_positions(Nq, Nk)[:, None]
    kpos = torch.arange(Nk)
    return (kpos <= qpos) & (kpos > qpos - window)


def _assert_equals_the_window_mask(got, q, k, v, window):
    """``got`` (at scale 0.3) and its gradients equal dense attention over the last ``window`` keys, in float64."""
    want = materialised_attention(q, k, v, causal=False, mask=_window_mask(q.shape[2], k.shape[2], window), scale=0.3)
    assert (got - want).abs().max() < 1e-12
    w = torch.randn_like(got)
    for name, a, b in zip("qkv", torch.autograd.grad((got * w).sum(), (q, k, v)),
                          torch.autograd.grad((want * w).sum(), (q, k, v))):
        assert (a - b).abs().max() < 1e-12, name


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_output_and_gradients_equal_dense_attention_with_the_window_mask(case):
    B, H, Hkv, Nq, Nk, D, Dv, window, tile = case
    q, k, v = (x.requires_grad_(True) for x in _problem(B, H, Hkv, Nq, Nk, D, Dv))
    got = sliding_window_attention(q, k, v, window=window, scale=0.3, tile=tile)
    _assert_equals_the_window_mask(got, q, k, v, window)


@pytest.mark.parametrize("case", CASES[:4] + CASES[6:], ids=[str(c) for c in CASES[:4] + CASES[6:]])
def test_a_gated_window_added_into_an_output_equals_the_plain_expression(case):
    """``into + gate * window(q, k, v)`` and the gradients of all five inputs, some gates exactly 0, in float64."""
    B, H, Hkv, Nq, Nk, D, Dv, window, tile = case
    q, k, v = _problem(B, H, Hkv, Nq, Nk, D, Dv)
    g = torch.Generator().manual_seed(3)
    gate = torch.rand(B, H, Nq, generator=g, dtype=torch.float64)
    gate[:, 0, ::3] = 0
    base = torch.randn(B, H, Nq, Dv, generator=g, dtype=torch.float64)
    leaves = [x.requires_grad_(True) for x in (q, k, v, gate, base)]
    got = add_gated_sliding_window(base * 1.0, gate, q, k, v, window=window, scale=0.3, tile=tile)
    mask = _window_mask(Nq, Nk, window)
    want = base + gate[..., None] * materialised_attention(q, k, v, causal=False, mask=mask, scale=0.3)
    assert (got - want).abs().max() < 1e-12
    w = torch.randn_like(got)
    for name, a, b in zip(("q", "k", "v", "gate", "into"), torch.autograd.grad((got * w).sum(), leaves),
                          torch.autograd.grad((want * w).sum(), leaves)):
        assert (a - b).abs().max() < 1e-12, name


def test_a_gated_window_takes_a_gradient_broadcast_from_a_sum():
    q, k, v = (x.requires_grad_(True) for x in _problem(1, 4, 2, 50, 50, 8, 8))
    gate = torch.rand(1, 4, 50, dtype=torch.float64, requires_grad=True)
    got = torch.autograd.grad(add_gated_sliding_window(torch.zeros(1, 4, 50, 8, dtype=torch.float64), gate, q, k, v,
                                                       window=9, scale=0.3, tile=8).sum(), (q, k, v, gate))
    plain = gate[..., None] * materialised_attention(q, k, v, causal=False, mask=_window_mask(50, 50, 9), scale=0.3)
    for a, b in zip(got, torch.autograd.grad(plain.sum(), (q, k, v, gate))):
        assert (a - b).abs().max() < 1e-12


def test_gated_window_gradcheck():
    q, k, v = (x.requires_grad_(True) for x in _problem(1, 2, 1, 11, 13, 4, 3))
    gate = torch.rand(1, 2, 11, dtype=torch.float64, requires_grad=True)
    base = torch.randn(1, 2, 11, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *x: add_gated_sliding_window(x[4] * 1.0, x[3], *x[:3], window=5, scale=0.3, tile=4),
        (q, k, v, gate, base))


@pytest.mark.parametrize("gate_shape, into_shape", [((1, 2, 9), (1, 2, 10, 8)), ((1, 2, 10), (1, 2, 10, 4))])
def test_a_gate_or_output_of_the_wrong_shape_is_refused(gate_shape, into_shape):
    q, k, v = _problem(1, 2, 1, 10, 10, 8, 8)
    with pytest.raises(ValueError, match="expected gate"):
        add_gated_sliding_window(torch.zeros(into_shape), torch.rand(gate_shape), q, k, v, window=4, scale=0.3)


def test_the_tile_does_not_change_the_result():
    q, k, v = _problem(1, 4, 2, 90, 90, 8, 8)
    outs = [sliding_window_attention(q, k, v, window=24, scale=0.3, tile=t) for t in (1, 8, 24, 64, 200)]
    for o in outs[1:]:
        assert (o - outs[0]).abs().max() < 1e-12


def test_a_window_longer_than_the_keys_is_causal_attention_and_costs_no_more():
    q, k, v = _problem(1, 4, 2, 30, 30, 8, 8)
    got = sliding_window_attention(q, k, v, window=1 << 40, scale=0.3, tile=1 << 40)
    want = materialised_attention(q, k, v, causal=True, mask=None, scale=0.3)
    assert (got - want).abs().max() < 1e-12


def test_a_non_finite_key_outside_every_window_does_not_reach_the_output():
    q, k, v = _problem(1, 2, 1, 40, 40, 8, 8)
    k[0, 0, 3] = float("nan")  # only queries 3 .. 10 see key 3 with a window of 8
    out = sliding_window_attention(q, k, v, window=8, scale=0.3, tile=8)
    assert out[:, :, 11:].isfinite().all() and out[:, :, :3].isfinite().all()
    assert out[:, :, 3:11].isnan().all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(window=0), "window must be a positive int"),
    (dict(window=4, tile=0), "tile must be a positive int"),
    (dict(window=2.5), "window must be a positive int"),
])
def test_bad_sizes_are_refused_naming_the_argument(kwargs, message):
    q, k, v = _problem(1, 2, 1, 10, 10, 8, 8)
    with pytest.raises(ValueError, match=message):
        sliding_window_attention(q, k, v, scale=0.3, **kwargs)


@pytest.mark.parametrize("shapes", [
    ((1, 2, 10, 8), (1, 1, 9, 8), (1, 1, 9, 8)),  # more queries than keys
    ((1, 3, 10, 8), (1, 2, 10, 8), (1, 2, 10, 8)),  # kv heads do not divide heads
    ((1, 2, 10, 8), (1, 1, 10, 4), (1, 1, 10, 8)),  # head_dim differs
    ((1, 2, 10, 8), (1, 1, 10, 8), (1, 1, 11, 8)),  # values not one per key
])
def test_mismatched_shapes_are_refused(shapes):
    q, k, v = (torch.randn(*s) for s in shapes)
    with pytest.raises(ValueError, match="expected q"):
        sliding_window_attention(q, k, v, window=4, scale=0.3)


@pytest.mark.parametrize("Nq, Nk, window", [(300, 300, 100), (300, 300, 63), (300, 300, 64), (40, 250, 130)])
def test_the_mechanisms_window_tiles_form_is_this_kernel_with_window_plus_one_keys(Nq, Nk, window):
    """``sliding_window``'s ``window`` counts the keys before the query; the kernel's counts the query's own too."""
    q, k, v = (x.requires_grad_(True) for x in _problem(1, 4, 2, Nq, Nk, 16, 16))
    got = attnkit.attention(q, k, v, "sliding_window", causal=True, window=window, scale=0.3, form="window_tiles")
    _assert_equals_the_window_mask(got, q, k, v, window + 1)


@pytest.fixture
def threads():
    """Sets torch's thread count for one test, restoring it after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_forward_only_calls_on_several_threads_take_the_block_sparse_engine(threads):
    q, k, v = _problem(1, 2, 1, 20, 20, 8, 8)
    threads(2)
    assert attnkit.explain(q, k, v, "sliding_window", causal=True, window=4).form == "block_sparse"
    assert attnkit.explain(q.requires_grad_(True), k, v, "sliding_window", causal=True, window=4).form == "window_tiles"
    with torch.no_grad():
        assert attnkit.explain(q, k, v, "sliding_window", causal=True, window=4).form == "block_sparse"


def test_the_mechanism_runs_window_tiles_on_causal_calls_without_mask(threads):
    q, k, v = _problem(1, 2, 1, 20, 20, 8, 8)
    mask = torch.ones(20, 20, dtype=torch.bool)
    threads(1)
    assert attnkit.explain(q, k, v, "sliding_window", causal=True, window=4).form == "window_tiles"
    assert attnkit.explain(q[:, :, 15:], k, v, "sliding_window", causal=True, window=4).form == "window_tiles"
    assert attnkit.explain(q.requires_grad_(True), k, v, "sliding_window", causal=True, window=4).form == "window_tiles"
    assert attnkit.explain(q, k, v, "sliding_window", causal=False, window=4).form == "block_sparse"
    assert attnkit.explain(q, k, v, "sliding_window", causal=True, mask=mask, window=4).form == "block_sparse"
    assert attnkit.explain(q, k[:, :, :9], v[:, :, :9], "sliding_window", causal=True, window=4).form == "block_sparse"
