"""tile_rows_attention = softmax attention over the kept tiles, for any layout (GQA, ragged rows, empty rows)."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.builders.estimated_sparse import expand_layout
from attnkit.kernels.tile_rows import tile_rows_attention


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_any_layout_equals_masked_attention(dtype):
    g = torch.Generator().manual_seed(0)
    N, block = 70, 16
    q = torch.randn(2, 4, N, 32, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 2, N, 32, generator=g, dtype=torch.float64) for _ in range(2))
    layout = torch.rand(2, 4, 5, 5, generator=g) < 0.5
    layout[0, 0, 3] = False  # a row keeping nothing
    layout[1, 2, 4, 4] = False  # a row without its diagonal tile
    expected = attnkit.attention(q, k, v, "softmax", causal=False, mask=expand_layout(layout, block, N, N))
    expected = expected * expand_layout(layout, block, N, N).any(-1, keepdim=True)  # empty rows are zeros
    out = tile_rows_attention(q.to(dtype), k.to(dtype), v.to(dtype), layout, block=block, scale=32 ** -0.5)
    assert (out.double() - expected).abs().max() < (1e-12 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("N", [5, 16, 17, 48, 63])
def test_awkward_lengths_read_in_place_equal_masked_attention(N):
    """Shorter than a block, one block, a block and a token, whole blocks, one token short of whole blocks."""
    g = torch.Generator().manual_seed(N)
    block, R = 16, -(-N // 16)
    q, k, v = (torch.randn(1, 2, N, 8, generator=g, dtype=torch.float64) for _ in range(3))
    layout = (torch.rand(1, 2, R, R, generator=g) < 0.6) | torch.eye(R, dtype=torch.bool)
    expected = attnkit.attention(q, k, v, "softmax", causal=False, mask=expand_layout(layout, block, N, N))
    out = tile_rows_attention(q, k, v, layout, block=block, scale=8 ** -0.5)
    assert (out - expected).abs().max() < 1e-12


@pytest.mark.parametrize("seed, hole, options", [(1, (2, 0), {}), (2, (2, 2), {"long_run": 1})],
                         ids=["gathered rows", "rows read run by run"])
def test_gradients_follow_the_math_path(seed, hole, options):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    layout = torch.ones(1, 2, 3, 3, dtype=torch.bool).tril()
    layout[0, 1, hole[0], hole[1]] = False
    assert torch.autograd.gradcheck(
        lambda a, b, c: tile_rows_attention(a, b, c, layout, block=16, scale=0.25, **options), (q, k, v))


@pytest.mark.parametrize("N", [64, 61])
def test_rows_read_run_by_run_equal_the_gathered_rows_and_masked_attention(N):
    """Dense rows with holes: read run by run in place (long_run=1), or gathered (long_run larger than any row)."""
    g = torch.Generator().manual_seed(N)
    block, R = 8, 8
    q = torch.randn(1, 4, N, 16, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 2, N, 16, generator=g, dtype=torch.float64) for _ in range(2))
    layout = (torch.rand(1, 4, R, R, generator=g) < 0.8).tril()
    layout[0, 1, 6, 6] = False  # runs without the diagonal tile
    expected = attnkit.attention(q, k, v, "softmax", causal=False, mask=expand_layout(layout, block, N, N))
    expected = expected * expand_layout(layout, block, N, N).any(-1, keepdim=True)
    runs = tile_rows_attention(q, k, v, layout, block=block, scale=0.25, long_run=1)
    gathered = tile_rows_attention(q, k, v, layout, block=block, scale=0.25, long_run=R + 1)
    assert (runs - expected).abs().max() < 1e-12
    assert (gathered - expected).abs().max() < 1e-12


@pytest.mark.parametrize("N", [64, 61])
def test_rows_one_at_a_time_equal_rows_in_groups_and_masked_attention(N):
    """budget=1 runs every gathered row alone: with whole blocks its queries and output are views (merged in place);
    a large budget runs each group of rows in one call, merged through indexed copies. Both equal masked attention,
    a row without its diagonal tile included (its past partial takes the whole softmax mass)."""
    g = torch.Generator().manual_seed(N + 1)
    block, R = 8, 8
    q = torch.randn(1, 4, N, 16, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 4, N, 16, generator=g, dtype=torch.float64) for _ in range(2))
    layout = (torch.rand(1, 4, R, R, generator=g) < 0.3).tril() | torch.eye(R, dtype=torch.bool)
    layout[0, 2, 5, 5], layout[0, 2, 5, 1] = False, True  # a row without its diagonal tile
    expected = attnkit.attention(q, k, v, "softmax", causal=False, mask=expand_layout(layout, block, N, N))
    alone = tile_rows_attention(q, k, v, layout, block=block, scale=0.25, budget=1, long_run=R + 1)
    grouped = tile_rows_attention(q, k, v, layout, block=block, scale=0.25, budget=1 << 30, long_run=R + 1)
    assert (alone - expected).abs().max() < 1e-12
    assert (grouped - expected).abs().max() < 1e-12
