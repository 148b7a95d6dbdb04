"""The run-time block selection kernel against dense attention with the equivalent boolean mask, in float64."""
from __future__ import annotations

import pytest
import torch

from attnkit.kernels.selected_blocks import add_gated_selected_blocks, matmul_shapes, selected_block_attention
from attnkit.masks.selection import block_selection
from attnkit.reference import materialised_attention

# (batch, heads, kv_heads, groups, q_len, kv_len, head_dim, block_q, block_k, k, causal, rows_per_item)
CASES = [
    (1, 4, 2, 2, 37, 37, 16, 1, 8, 3, True, None),  # per token, GQA-shared, awkward length
    (2, 4, 2, 4, 63, 63, 16, 4, 8, 4, True, 3),  # per head, query blocks, tiny items
    (1, 8, 2, 2, 129, 129, 60, 16, 16, 5, False, None),
    (1, 4, 1, 1, 7, 63, 16, 1, 16, 2, True, None),  # decode-like: few queries, long cache
    (2, 2, 2, 2, 129, 7, 8, 8, 4, 3, True, None),  # more queries than keys: early rows see nothing
    (1, 4, 4, 4, 50, 50, 8, 2, 5, 10, True, 1),  # k larger than the blocks: duplicates
    (1, 2, 1, 1, 32, 32, 8, 4, 8, 2, False, None),  # no tile needs the mask
]


def _problem(B, H, Hkv, G, Nq, Nk, D, bq, bk, kk, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Nq, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hkv, Nk, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hkv, Nk, D + 3, generator=g, dtype=torch.float64)
    rows, nk = -(-Nq // bq), -(-Nk // bk)
    blocks = torch.randint(0, nk, (B, G, rows, kk), generator=g)
    valid = torch.rand(B, G, rows, kk, generator=g) < 0.7
    return q, k, v, block_selection(blocks, valid, block_q=bq, block_k=bk, q_len=Nq, kv_len=Nk)


def _dense(q, k, v, sel, causal):
    mask = sel.element_mask(q.shape[1], causal=causal)
    out = materialised_attention(q, k, v, causal=False, mask=mask, scale=q.shape[-1] ** -0.5)
    return torch.where(mask.any(-1, keepdim=True), out, 0.0)


@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients_equal_dense_with_the_mask(case):
    *sizes, causal, rows_per_item = case
    q, k, v, sel = _problem(*sizes)
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    out = selected_block_attention(*leaves, sel, scale=q.shape[-1] ** -0.5, causal=causal, rows_per_item=rows_per_item)
    ref = _dense(*leaves, sel, causal)
    assert (out - ref).abs().max() < 1e-12
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    grads = torch.autograd.grad((out * cot).sum(), leaves)
    expected = torch.autograd.grad((ref * cot).sum(), leaves)
    for name, a, b in zip("qkv", grads, expected):
        assert (a - b).abs().max() < 1e-12, f"d{name}"


@pytest.mark.parametrize("case", CASES)
def test_gated_selected_blocks_added_into_an_output_equal_the_plain_expression(case):
    """``into + gate * selected(q, k, v)`` and the gradients of all five inputs, some gates exactly 0, in float64."""
    *sizes, causal, rows_per_item = case
    q, k, v, sel = _problem(*sizes)
    B, H, Nq, Dv = q.shape[0], q.shape[1], q.shape[2], v.shape[3]
    g = torch.Generator().manual_seed(3)
    gate = torch.rand(B, H, Nq, generator=g, dtype=torch.float64)
    gate[:, 0, ::3] = 0
    base = torch.randn(B, H, Nq, Dv, generator=g, dtype=torch.float64)
    leaves = [x.requires_grad_(True) for x in (q, k, v, gate, base)]
    scale = q.shape[-1] ** -0.5
    got = add_gated_selected_blocks(base * 1.0, gate, q, k, v, sel, scale=scale, causal=causal,
                                    rows_per_item=rows_per_item)
    want = base + gate[..., None] * _dense(q, k, v, sel, causal)
    assert (got - want).abs().max() < 1e-12
    w = torch.randn_like(got)
    for name, a, b in zip(("q", "k", "v", "gate", "into"), torch.autograd.grad((got * w).sum(), leaves),
                          torch.autograd.grad((want * w).sum(), leaves)):
        assert (a - b).abs().max() < 1e-12, name


def test_gated_selected_blocks_take_a_strided_gate_and_a_gradient_broadcast_from_a_sum():
    """The gate as a slice of a ``(..., branches)`` tensor, as NSA passes it, and ``dO`` of stride 0."""
    q, k, v, sel = _problem(1, 8, 2, 2, 45, 45, 8, 1, 8, 3)
    gates = torch.rand(1, 8, 45, 3, dtype=torch.float64, requires_grad=True)
    leaves = [x.requires_grad_(True) for x in (q, k, v)] + [gates]
    got = torch.autograd.grad(add_gated_selected_blocks(torch.zeros(1, 8, 45, 11, dtype=torch.float64),
                                                        gates[..., 1], q, k, v, sel, scale=8 ** -0.5,
                                                        causal=True).sum(), leaves)
    plain = gates[..., 1:2] * _dense(q, k, v, sel, True)
    for name, a, b in zip(("q", "k", "v", "gates"), got, torch.autograd.grad(plain.sum(), leaves)):
        assert (a - b).abs().max() < 1e-12, name


def test_gated_selected_blocks_gradcheck():
    q, k, v, sel = _problem(1, 2, 1, 1, 11, 13, 4, 1, 4, 2)
    gate = torch.rand(1, 2, 11, dtype=torch.float64, requires_grad=True)
    base = torch.randn(1, 2, 11, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *x: add_gated_selected_blocks(x[4] * 1.0, x[3], *x[:3], sel, scale=0.3, causal=True),
        tuple(t.requires_grad_(True) for t in (q, k, v)) + (gate, base))


@pytest.mark.parametrize("gate_shape, into_shape", [((1, 2, 9), (1, 2, 10, 8)), ((1, 2, 10), (1, 2, 10, 4))])
def test_a_gate_or_output_of_the_wrong_shape_is_refused(gate_shape, into_shape):
    q, k, v, sel = _problem(1, 2, 1, 1, 10, 10, 8, 1, 4, 2)
    with pytest.raises(ValueError, match="expected gate"):
        add_gated_selected_blocks(torch.zeros(into_shape), torch.rand(gate_shape), q, k, v[..., :8], sel, scale=0.3,
                                  causal=True)


def test_execution_knobs_do_not_change_the_result():
    q, k, v, sel = _problem(1, 4, 2, 2, 100, 100, 16, 1, 8, 4)
    base = selected_block_attention(q, k, v, sel, scale=0.25, causal=True)
    for rows_per_item, budget in ((1, 1 << 10), (7, 1 << 12), (100, 1 << 24)):
        other = selected_block_attention(q, k, v, sel, scale=0.25, causal=True, rows_per_item=rows_per_item,
                                         budget=budget)
        assert (other - base).abs().max() < 1e-13


def test_matmul_shapes_cover_every_selected_pair_once_per_item_row():
    q, k, v, sel = _problem(1, 4, 2, 2, 100, 100, 16, 1, 8, 4)
    shapes = matmul_shapes(q, k, v, sel, causal=True, rows_per_item=5, budget=1 << 11)
    pairs = int(sel.valid.sum())  # (row, block) pairs, a row being 2 heads x 1 query here
    item_rows = sum(items * rows for items, rows, _, _ in shapes)
    assert all(keys == 8 and dim == 16 and rows == 5 * 2 for _, rows, keys, dim in shapes)
    # every pair is one item row; items are padded to 5 rows, at most 4 pads per (key tile, mask kind)
    assert pairs * 2 <= item_rows <= (pairs + 4 * 2 * 2 * 13) * 2


def test_rows_that_select_nothing_or_only_future_keys_are_zero_without_nan():
    q, k, v, _ = _problem(1, 2, 2, 2, 16, 16, 8, 1, 4, 2)
    blocks = torch.zeros(1, 2, 16, 2, dtype=torch.long)
    blocks[..., 1] = 3  # keys 12..15: the future of queries 0..11
    valid = torch.ones_like(blocks, dtype=torch.bool)
    valid[:, :, 0] = False  # row 0 selects nothing
    valid[:, :, 5, 0] = False  # row 5 selects only its future
    sel = block_selection(blocks, valid, block_q=1, block_k=4, q_len=16, kv_len=16)
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    out = selected_block_attention(*leaves, sel, scale=0.3, causal=True)
    assert out[:, :, 0].abs().max() == 0 and out[:, :, 5].abs().max() == 0
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)


def test_density_counts_the_attended_pairs():
    _, _, _, sel = _problem(1, 4, 2, 2, 37, 37, 16, 1, 8, 3)
    for causal in (False, True):
        mask = sel.element_mask(2, causal=causal)
        dense = torch.ones(37, 37, dtype=torch.bool).tril() if causal else torch.ones(37, 37, dtype=torch.bool)
        assert sel.density(causal=causal) == pytest.approx(mask.sum().item() / (2 * dense.sum().item()))


def test_bad_selections_are_refused():
    blocks = torch.zeros(1, 2, 4, 2, dtype=torch.long)
    with pytest.raises(TypeError, match="blocks"):
        block_selection(blocks.int(), block_q=1, block_k=4, q_len=4, kv_len=8)
    with pytest.raises(ValueError, match="query rows"):
        block_selection(blocks, block_q=2, block_k=4, q_len=4, kv_len=8)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        block_selection(blocks + 2, block_q=1, block_k=4, q_len=4, kv_len=8)
    with pytest.raises(ValueError, match="valid"):
        block_selection(blocks, blocks[..., :1] > 0, block_q=1, block_k=4, q_len=4, kv_len=8)
    with pytest.raises(ValueError, match="block_k"):
        block_selection(blocks, block_q=1, block_k=0, q_len=4, kv_len=8)
    sel = block_selection(blocks, block_q=1, block_k=4, q_len=4, kv_len=8)
    q, k = torch.randn(1, 3, 4, 8), torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="groups"):
        selected_block_attention(q, k, k, sel, scale=1.0, causal=True)
    with pytest.raises(ValueError, match="q_len"):
        selected_block_attention(q[:, :2, :3], k, k, sel, scale=1.0, causal=True)
