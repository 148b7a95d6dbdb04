"""NSA's selection and layer: equation 9 by hand, the same top-n in float32 and float64, gradients to the router."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.families import nsa
from attnkit.families.nsa import nsa_inputs
from attnkit.kernels.nsa_branches import (block_importance, compress, compress_by_segments, compressed_visible,
                                         compressed_weights, top_blocks)
from attnkit.kernels import nsa_compression
from attnkit.kernels.nsa_compression import compression_and_selection
from attnkit.kernels.positions import query_positions


@pytest.mark.parametrize("n_cmp, block, stride, select_block, n_blocks",
                         [(11, 32, 16, 64, 6), (9, 16, 8, 16, 4), (7, 24, 8, 16, 3), (5, 8, 8, 32, 2)])
def test_block_importance_is_equation_9_summed_over_the_group(n_cmp, block, stride, select_block, n_blocks):
    p = torch.rand(2, 4, 5, n_cmp, dtype=torch.float64)
    got = block_importance(p, 2, n_blocks, block=block, stride=stride, select_block=select_block)
    want = torch.zeros(2, 4, 5, n_blocks, dtype=torch.float64)
    for j in range(n_blocks):
        for m in range(select_block // stride):
            for n in range(block // stride):
                i = select_block // stride * j + m - n
                if 0 <= i < p.shape[-1]:
                    want[..., j] += p[..., i]
    assert torch.allclose(got, want.view(2, 2, 2, 5, n_blocks).sum(2))


@pytest.mark.parametrize("n_tokens, block, stride", [(100, 32, 16), (70, 12, 4), (64, 8, 8), (40, 32, 16), (20, 32, 16)])
def test_compression_by_segments_is_the_unfolded_blocks_mlp(n_tokens, block, stride):
    g = torch.Generator().manual_seed(n_tokens)
    x = torch.randn(2, 3, n_tokens, 5, dtype=torch.float64, generator=g)
    weights = [torch.randn(*shape, dtype=torch.float64, generator=g, requires_grad=True)
               for shape in ((block, 5), (block * 5, 7), (7, 5))]
    x_seg = x.clone().requires_grad_()
    want = compress(x.requires_grad_(), *weights, block=block, stride=stride)
    got = compress_by_segments(x_seg, *weights, block=block, stride=stride)
    assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    if want.numel():
        grad = torch.randn(want.shape, dtype=torch.float64, generator=g)
        want_grads = torch.autograd.grad(want, [x, *weights], grad)
        got_grads = torch.autograd.grad(got, [x_seg, *weights], grad)
        assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-12) for a, b in zip(got_grads, want_grads))


def _selection(q, k, v, tensors, *, stride=8, select_block=16, count=4):
    block = tensors["k_pos"].shape[0]
    kc = compress(k, tensors["k_pos"], tensors["k_w1"], tensors["k_w2"], block=block, stride=stride)
    visible = compressed_visible(query_positions(q.shape[2], k.shape[2]), kc.shape[2], block, stride)
    p = compressed_weights(q, kc, visible, q.shape[-1] ** -0.5)
    n_blocks = -(-k.shape[2] // select_block)
    imp = block_importance(p, k.shape[1], n_blocks, block=block, stride=stride, select_block=select_block)
    return top_blocks(imp, q.shape[2], k.shape[2], select_block=select_block, count=count)


def _problem(N=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, h, N, 16, generator=g, dtype=torch.float64) for h in (4, 2, 2))
    return q, k, v, nsa_inputs(q, k, v, g, compress_block=16)


def test_float32_and_float64_choose_the_same_blocks():
    q, k, v, tensors = _problem()
    b64, v64 = _selection(q, k, v, tensors)
    b32, v32 = _selection(q.float(), k.float(), v.float(), {n: t.float() for n, t in tensors.items()})
    assert torch.equal(v64, v32) and torch.equal(torch.where(v64, b64, -1), torch.where(v32, b32, -1))


def test_initial_and_local_blocks_are_always_selected_and_never_the_future():
    q, k, v, tensors = _problem()
    blocks, valid = _selection(q, k, v, tensors)
    t = torch.arange(120)
    for need in (torch.zeros_like(t), t // 16, (t // 16 - 1).clamp(min=0)):
        assert ((blocks == need[:, None]) & valid).any(-1).all()
    assert (blocks[valid] <= (t // 16)[:, None].expand_as(blocks[0, 0])[None, None].expand_as(blocks)[valid]).all()
    # each row's valid blocks in ascending order, then its unused slots
    assert ((blocks[..., 1:] > blocks[..., :-1]) | ~valid[..., 1:]).all()
    assert (valid[..., :-1] | ~valid[..., 1:]).all()


@pytest.mark.parametrize("dense_pairs", [0, 1 << 62], ids=["kernels", "dense"])
def test_fast_form_equals_reference_and_trains_the_compression_and_gates(monkeypatch, dense_pairs):
    monkeypatch.setattr(nsa, "DENSE_PAIRS", dense_pairs)
    q, k, v, tensors = _problem(N=77, seed=1)
    params = {"compress_stride": 8, "select_block": 16, "select_count": 4, "window": 8}
    leaves = {"q": q, "k": k, "v": v, **tensors}
    leaves = {n: t.requires_grad_(True) for n, t in leaves.items()}
    fast = attnkit.attention(causal=True, mechanism="nsa", **params, **leaves)
    ref = attnkit.attention(causal=True, mechanism="nsa", form="reference", **params, **leaves)
    assert (fast - ref).abs().max() < 1e-12
    w = torch.randn_like(fast)
    grads = torch.autograd.grad((fast * w).sum(), list(leaves.values()))
    want = torch.autograd.grad((ref * w).sum(), list(leaves.values()))
    for name, got, expected in zip(leaves, grads, want):
        assert (got - expected).abs().max() < 1e-12, name
        assert got.abs().max() > 0, name


def test_short_sequences_take_the_dense_branches_and_long_ones_the_kernels(monkeypatch):
    calls = []
    zeros = torch.zeros_like  # the branches' outputs are q-shaped
    monkeypatch.setattr(nsa, "dense_selection_and_window",
                        lambda q, *a, **kw: calls.append("dense") or (zeros(q), zeros(q)))
    monkeypatch.setattr(nsa, "add_gated_selected_blocks", lambda into, *a, **kw: calls.append("kernels") or into)
    monkeypatch.setattr(nsa, "add_gated_sliding_window", lambda into, *a, **kw: into)
    monkeypatch.setattr(nsa, "DENSE_PAIRS", 40 * 40)
    for n in (40, 41):
        q, k, v, tensors = _problem(N=n)
        attnkit.attention(q, k, v, "nsa", causal=True, compress_stride=8, select_block=16, select_count=4,
                          window=8, **tensors)
    assert calls == ["dense", "kernels"]


def test_layer_compresses_blocks_of_twice_its_stride():
    assert attnkit.nn.Attention(32, heads=4, mechanism="nsa").inputs.k_pos.shape == (32, 8)
    layer = attnkit.nn.Attention(32, heads=4, mechanism="nsa", compress_stride=8, select_block=16, select_count=4)
    assert layer.inputs.k_pos.shape == layer.inputs.v_pos.shape == (16, 8)
    assert layer(torch.randn(1, 40, 32), causal=True).shape == (1, 40, 32)


def test_layer_learns_its_inputs():
    torch.manual_seed(0)
    layer = attnkit.nn.Attention(32, heads=4, kv_heads=2, mechanism="nsa", select_block=32, select_count=3, window=16)
    x = torch.randn(2, 70, 32)
    layer(x, causal=True).square().mean().backward()
    for name in ("k_w1", "v_w2", "k_pos"):
        assert getattr(layer.inputs, name).grad.abs().max() > 0
    assert layer.inputs.gate.weight.grad.abs().max() > 0


def test_bad_parameters_are_refused():
    q, k, v, tensors = _problem(N=40)
    with pytest.raises(ValueError, match="select_count"):
        attnkit.attention(q, k, v, "nsa", causal=True, select_count=2, **tensors)
    with pytest.raises(ValueError, match="compress_stride"):
        attnkit.attention(q, k, v, "nsa", causal=True, compress_stride=5, **tensors)
    with pytest.raises(ValueError, match="gates"):
        attnkit.attention(q, k, v, "nsa", causal=True, **{**tensors, "gates": tensors["gates"][..., :2]})


@pytest.mark.parametrize("budget, select_rows", [(1 << 24, 256), (700, 256), (700, 48)])
def test_one_pass_compression_equals_the_equations_in_small_chunks(monkeypatch, budget, select_rows):
    # 700: chunks of 16 queries; with blocks chosen every 48 tokens the last choice takes a partial group
    monkeypatch.setattr(nsa_compression, "SELECT_ROWS", select_rows)
    q, k, v, tensors = _problem(N=150, seed=2)
    block, stride = tensors["k_pos"].shape[0], 8
    kc = compress(k, tensors["k_pos"], tensors["k_w1"], tensors["k_w2"], block=block, stride=stride)
    vc = compress(v, tensors["v_pos"], tensors["v_w1"], tensors["v_w2"], block=block, stride=stride)
    q, kc, vc = (t.detach().requires_grad_(True) for t in (q, kc, vc))
    qpos = query_positions(150, 150)
    out, blocks, valid = compression_and_selection(q, kc, vc, qpos, scale=0.25, block=block, stride=stride,
                                                   select_block=16, select_count=4, kv_len=150, budget=budget)
    p = compressed_weights(q, kc, compressed_visible(qpos, kc.shape[2], block, stride), 0.25)
    assert torch.allclose(out, p @ vc.repeat_interleave(2, dim=1), atol=1e-12)
    imp = block_importance(p.detach(), 2, 10, block=block, stride=stride, select_block=16)
    want_blocks, want_valid = top_blocks(imp, 150, 150, select_block=16, count=4)
    assert torch.equal(valid, want_valid) and torch.equal(torch.where(valid, blocks, -1), torch.where(valid, want_blocks, -1))
    w = torch.randn_like(out)
    got = torch.autograd.grad((out * w).sum(), (q, kc, vc))
    ref = torch.autograd.grad(((p @ vc.repeat_interleave(2, dim=1)) * w).sum(), (q, kc, vc))
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(got, ref))


def test_tied_blocks_go_to_the_earlier_ones():
    importance = torch.zeros(1, 1, 3, 12)
    importance[0, 0, 1, 6] = 1.0  # the second token's only preferred block
    blocks, valid = top_blocks(importance, 3, 12 * 16, select_block=16, count=5)
    chosen = [sorted(b[v].tolist()) for b, v in zip(blocks[0, 0], valid[0, 0])]
    assert chosen == [[0, 1, 2, 10, 11], [0, 1, 6, 10, 11], [0, 1, 2, 10, 11]]


def test_branch_keys_and_values_feed_only_their_branch():
    q, k, v, tensors = _problem(N=60, seed=3)
    params = {"compress_stride": 8, "select_block": 16, "select_count": 4, "window": 8}
    shared = {n: t for n, t in tensors.items() if n not in ("k_cmp", "v_cmp", "k_win", "v_win")}
    gates = torch.zeros_like(tensors["gates"])
    for branch, names in ((0, ("k_cmp", "v_cmp")), (2, ("k_win", "v_win"))):
        only = gates.clone()
        only[..., branch] = 1.0
        own = {n: tensors[n] for n in names}
        got = attnkit.attention(q, k, v, "nsa", causal=True, **params, **{**shared, **own, "gates": only})
        # the branch's own keys and values in the call's place give the same branch output
        want = attnkit.attention(q, own[names[0]], own[names[1]], "nsa", causal=True, **params,
                                 **{**shared, "gates": only})
        assert (got - want).abs().max() < 1e-12
    only = gates.clone()
    only[..., 1] = 1.0
    slc = attnkit.attention(q, k, v, "nsa", causal=True, **params, **{**tensors, "gates": only})
    alone = attnkit.attention(q, k, v, "nsa", causal=True, **params, **{**shared, "gates": only,
                                                                          "k_cmp": tensors["k_cmp"]})
    assert (slc - alone).abs().max() < 1e-12  # the window's keys and values do not reach the selection


def test_a_positional_encoding_rotates_the_branch_keys_as_it_rotates_k():
    q, k, v, tensors = _problem(N=50, seed=4)
    params = {"compress_stride": 8, "select_block": 16, "select_count": 4, "window": 8}
    rope = attnkit.positional.RoPE(16)
    got = attnkit.attention(q, k, v, "nsa", causal=True, position=rope, **params, **tensors)
    qr, kr = rope.apply(q, k, q_offset=0, k_offset=0)
    turned = {n: rope.apply(q, tensors[n], q_offset=0, k_offset=0)[1] for n in ("k_cmp", "k_win")}
    want = attnkit.attention(qr, kr, v, "nsa", causal=True, **params, **{**tensors, **turned})
    assert (got - want).abs().max() < 1e-12


def test_randomized_positions_give_the_branch_keys_the_draw_of_k():
    # positions drawn per call: the branch keys must read the same draw as q and k, so branch keys equal to k
    # give the call without them
    q, k, v, tensors = _problem(N=50, seed=5)
    shared = {n: t for n, t in tensors.items() if n not in ("k_cmp", "v_cmp", "k_win", "v_win")}
    params = {"compress_stride": 8, "select_block": 16, "select_count": 4, "window": 8, **shared}

    def position():
        return attnkit.positional.RandomizedPositions(attnkit.positional.RoPE(16), 512, torch.Generator().manual_seed(7))

    plain = attnkit.attention(q, k, v, "nsa", causal=True, position=position(), **params)
    branches = attnkit.attention(q, k, v, "nsa", causal=True, position=position(), **params,
                                 k_cmp=k, v_cmp=v, k_win=k, v_win=v)
    assert (plain - branches).abs().max() < 1e-12


def test_layer_gives_each_branch_its_own_keys_and_values():
    torch.manual_seed(0)
    layer = attnkit.nn.Attention(32, heads=4, kv_heads=2, mechanism="nsa", select_block=32, select_count=3, window=16)
    x = torch.randn(2, 70, 32)
    layer(x, causal=True).square().mean().backward()
    weight = layer.inputs.branch_kv.weight
    assert weight.shape == (4 * 2 * 8, 32)
    for i, name in enumerate(("k_cmp", "v_cmp", "k_win", "v_win")):
        assert weight.grad[i * 16 : (i + 1) * 16].abs().max() > 0, name
