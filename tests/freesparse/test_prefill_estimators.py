"""The prefill estimators choose what their equations choose, in any dtype, and report it."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.builders.estimated_sparse import keep_by_cumulative_mass, selection_report
from attnkit.families import block_topk, xattention

from ..cache.helpers import qkv

D = 16  # head_dim of the inputs


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_xattention_estimate_equals_the_equations(dtype):
    """Lengths cut into whole blocks or not, into whole cells or not; the cell rows in one chunk or several."""
    for N in (120, 117, 96):
        q, k, _ = qkv(n=N, d=D, seed=1)
        for block, stride, threshold in ((16, 4, 0.7), (24, 8, 0.9), (8, 2, 0.5)):
            ref = xattention.reference_layout(q, k, scale=0.25, block=block, stride=stride, threshold=threshold)
            fast = xattention.xattention_layout(q.to(dtype), k.to(dtype), scale=0.25, block=block, stride=stride,
                                                threshold=threshold)
            assert torch.equal(fast, ref), (N, block, stride, threshold)
            tiles = xattention.antidiagonal_tiles(q.to(dtype), k.to(dtype), scale=0.25, block=block, stride=stride,
                                                  chunk=2 * block // stride)
            assert torch.equal(xattention._keep(tiles, threshold), ref), (N, block, stride, threshold)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_block_topk_estimate_equals_the_equations(dtype):
    q, k, _ = qkv(n=117, d=D, seed=2)
    for block, top_k in ((8, 3), (16, 1), (10, 20)):
        ref = block_topk.reference_layout(q, k, scale=0.25, block=block, top_k=top_k)
        fast = block_topk.block_topk_layout(q.to(dtype), k.to(dtype), scale=0.25, block=block, top_k=top_k)
        assert torch.equal(fast, ref), (block, top_k)


def test_cumulative_rule_keeps_the_shortest_prefix_reaching_the_target():
    scores = torch.tensor([[0.1, 0.4, 0.2, 0.3]])
    none = torch.zeros(1, 4, dtype=torch.bool)
    everything = torch.ones(1, 4, dtype=torch.bool)
    keep = keep_by_cumulative_mass(scores, torch.tensor([0.65]), none, everything)
    assert keep.tolist() == [[False, True, False, True]]  # 0.4 + 0.3 >= 0.65, 0.4 alone is not
    forced = torch.tensor([[True, False, False, False]])
    keep = keep_by_cumulative_mass(scores, torch.tensor([0.45]), forced, everything)
    assert keep.tolist() == [[True, True, False, False]]  # forced 0.1 counts toward the target
    keep = keep_by_cumulative_mass(scores, torch.tensor([0.9]), none, torch.tensor([[True, False, True, True]]))
    assert keep.tolist() == [[True, False, True, True]]  # not allowed is never kept


def test_full_budget_is_dense_attention_and_reports_so():
    q, k, v = qkv(n=64, d=D)
    out = attnkit.attention(q, k, v, "block_topk", causal=True, block=8, top_k=8)
    dense = attnkit.attention(q, k, v, "softmax", causal=True)
    assert (out - dense).abs().max() < 1e-12
    report = selection_report("block_topk", q, k, v, block=8, top_k=8)
    assert report["density"] == pytest.approx(1.0) and report["recall"] == pytest.approx(1.0)
    assert report["output_rel_error"] < 1e-12


def test_report_of_a_sparse_choice():
    q, k, v = qkv(n=128, d=D)
    report = selection_report("xattention", q, k, v, rows=40, block=16, stride=4, threshold=0.5)
    assert 0 < report["density"] < 1 and 0 < report["recall"] < 1 and report["output_rel_error"] > 0
    assert report["rows"] == 40


def test_bad_parameters_are_refused():
    q, k, v = qkv(n=32, d=D)
    with pytest.raises(ValueError, match="stride must divide block"):
        attnkit.attention(q, k, v, "xattention", causal=True, block=16, stride=3)
    with pytest.raises(ValueError, match="threshold"):
        attnkit.attention(q, k, v, "xattention", causal=True, threshold=1.5)
    with pytest.raises(ValueError, match="top_k"):
        attnkit.attention(q, k, v, "block_topk", causal=True, top_k=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vertical_slash_lines_equal_the_equations(dtype):
    from attnkit.families import vertical_slash as vs

    q, k, _ = qkv(n=90, d=D, seed=4)
    p = dict(scale=0.25, last_q=10, vertical=7, slash=9, sinks=3, local=4)
    ref = vs.reference_mask(q, k, **p)
    rows = torch.arange(90)
    kept, density = vs.attended(q.to(dtype), k.to(dtype), rows, block=16, **p)
    assert torch.equal(kept, ref)
    assert density == pytest.approx(ref.sum().item() / (4 * 90 * 91 / 2))


def test_vertical_slash_attends_exactly_the_kept_positions():
    from attnkit.families import vertical_slash as vs

    q, k, v = qkv(n=100, d=D, seed=5)
    p = dict(last_q=12, vertical=9, slash=11, sinks=2, local=5)
    kept = vs.reference_mask(q, k, scale=0.25, **p)
    expected = attnkit.attention(q, k, v, "softmax", causal=False, mask=kept, scale=0.25)
    for block in (7, 16, 128):
        out = attnkit.attention(q, k, v, "vertical_slash", causal=True, scale=0.25, block=block, **p)
        assert (out - expected).abs().max() < 1e-12, block


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_flexprefill_layout_equals_the_equations_for_both_head_kinds(dtype):
    from attnkit.families import flexprefill as fp

    g = torch.Generator().manual_seed(7)
    for N, block, tau in ((120, 16, 0.15), (100, 8, 0.05), (130, 16, 1.0)):
        q = torch.randn(1, 4, N, 16, generator=g, dtype=torch.float64)
        k = torch.randn(1, 2, N, 16, generator=g, dtype=torch.float64)
        ref = fp.reference_layout(q, k, scale=0.25, block=block, gamma=0.8, tau=tau)
        fast = fp.flexprefill_layout(q.to(dtype), k.to(dtype), scale=0.25, block=block, gamma=0.8, tau=tau)
        assert torch.equal(fast, ref), (N, block, tau)


def test_js_distance():
    from attnkit.families.flexprefill import js_distance

    p, q = torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.25, 0.25, 0.5])
    m = (p + q) / 2
    expected = (0.5 * (p[:2] * (p[:2] / m[:2]).log()).sum() + 0.5 * (q * (q / m).log()).sum()).sqrt()
    assert js_distance(p, q) == pytest.approx(float(expected))
    assert js_distance(p, p) == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sample_attention_keeps_what_the_equations_keep(dtype):
    from attnkit.families import sample_attention as sa

    q, k, _ = qkv(n=96, d=D, seed=8)
    for row_ratio, alpha, window_ratio in ((0.25, 0.6, 0.1), (0.1, 0.9, 0.0), (1.0, 0.3, 0.05)):
        p = dict(scale=0.25, row_ratio=row_ratio, alpha=alpha, window_ratio=window_ratio)
        ref = sa.reference_mask(q, k, **p)
        kept, density = sa.attended(q.to(dtype), k.to(dtype), torch.arange(96), block=16, **p)
        assert torch.equal(kept, ref), p
        assert density == pytest.approx(ref.sum().item() / (4 * 96 * 97 / 2))
        out = attnkit.attention(q, k, qkv(n=96, d=D, seed=9)[2], "sample_attention", causal=True, block=16, **p)
        expected = attnkit.attention(q, k, qkv(n=96, d=D, seed=9)[2], "softmax", causal=False, mask=ref, scale=0.25)
        assert (out - expected).abs().max() < 1e-12


def test_last_queries_lines_sum_the_attention_of_the_last_queries_a_few_rows_at_a_time():
    from attnkit.builders.estimated_sparse import last_queries_lines

    q, k, _ = qkv(n=50, d=D, seed=5)
    n, N = 12, 50
    s = (q[:, :, -n:] @ k.repeat_interleave(2, dim=1).transpose(-1, -2)) * 0.25
    pos = torch.arange(N - n, N)
    A = torch.softmax(s.masked_fill(torch.arange(N) > pos[:, None], float("-inf")), -1)
    slash = torch.zeros(1, 4, N, dtype=torch.float64)
    for t in range(n):
        for o in range(int(pos[t]) + 1):
            slash[..., o] += A[:, :, t, pos[t] - o]
    for budget in (1, 1 << 22):  # one row at a time, all rows at once
        columns, slashes, rows = last_queries_lines(q, k, 0.25, n, budget=budget)
        assert rows == n
        torch.testing.assert_close(columns, A.sum(2), rtol=0, atol=1e-12)
        torch.testing.assert_close(slashes, slash, rtol=0, atol=1e-12)
