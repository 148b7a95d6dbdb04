"""Mask functions and their tile classifiers: layouts reproduce the element mask exactly."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.builders.mask_pipeline import dense_pattern, mask_of
from attnkit.masks import MaskMod, build_layout, causal_mask
from attnkit.masks.documents import lengths_to_ids, shared_question
from attnkit.masks.spatial import Grid, neighborhood, swin
from attnkit.masks.window import sliding_window
from attnkit.registry import get

SPARSE = [n for n in attnkit.mechanisms("sparse")]


def _inputs(spec, B, H, Hkv, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N, 8, generator=g)
    k = torch.randn(B, Hkv, N, 8, generator=g)
    extra = spec.tensor_inputs(q, k, k, g) if spec.tensor_inputs else {}
    return q, k, extra


@pytest.mark.parametrize("name", SPARSE)
@pytest.mark.parametrize("blocks", [(16, 8), (7, 13)])
def test_layout_reproduces_element_mask(name, blocks):
    spec = get(name)
    causal = "causal-self" in spec.patterns
    for N in (50, 97):
        q, k, extra = _inputs(spec, 2, 4, 2, N)
        params = {n: x for n, x in spec.test_params.items() if n not in ("block_q", "block_k")}
        mask = mask_of(spec, q, k, causal=causal, **params, **extra)
        dense = dense_pattern(mask, 2, 4, N, N)
        layout = build_layout(mask, batch=2, heads=4, q_len=N, kv_len=N, block_q=blocks[0], block_k=blocks[1])
        got = layout.element_mask()
        assert torch.equal(torch.broadcast_to(got, (2, 4, N, N)), torch.broadcast_to(dense, (2, 4, N, N))), name
        assert layout.pairs == int(torch.broadcast_to(dense, (2, 4, N, N)).sum())
        tiles = (layout.kind != 0).repeat_interleave(blocks[0], 2).repeat_interleave(blocks[1], 3)[..., :N, :N]
        assert layout.computed_pairs == int(torch.broadcast_to(tiles, (2, 4, N, N)).sum()) >= layout.pairs


def test_combinators_match_pairwise_evaluation_without_classifier():
    m = (sliding_window(9) | ~causal_mask()) & ~sliding_window(2)
    blind = MaskMod(m.fn)  # no tile classifier: classified pair by pair
    a = build_layout(m, batch=1, heads=1, q_len=61, kv_len=61, block_q=8, block_k=8)
    b = build_layout(blind, batch=1, heads=1, q_len=61, kv_len=61, block_q=8, block_k=8)
    assert torch.equal(a.element_mask(), b.element_mask())
    assert torch.equal(a.kind, b.kind)


def test_shared_question_sees_question_and_own_answer_only():
    ids = lengths_to_ids([3, 2, 2])
    dense = dense_pattern(shared_question(ids), 1, 1, 7, 7)[0, 0]
    assert dense[4].tolist() == [True, True, True, True, True, False, False]
    assert dense[6].tolist() == [True, True, True, False, False, True, True]


def test_swin_shift_equals_cyclic_shift_with_region_mask():
    """Swin's construction, literally: roll by -shift, window partition, region labels of the slices."""
    H = W = 8
    M, s = 4, 2
    regions = torch.zeros(H, W, dtype=torch.long)
    label = 0
    for hs in (slice(0, -M), slice(-M, -s), slice(-s, None)):
        for ws in (slice(0, -M), slice(-M, -s), slice(-s, None)):
            regions[hs, ws] = label
            label += 1
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    sy, sx = (ys - s) % H, (xs - s) % W  # where each token lands after torch.roll(x, -s)
    win = (sy // M) * (W // M) + sx // M
    reg = regions[sy, sx]
    key = (win * 100 + reg).flatten()
    expected = key[:, None] == key[None, :]
    got = dense_pattern(swin(Grid((H, W)), M, s), 1, 1, H * W, H * W)[0, 0]
    assert torch.equal(got, expected)


def test_neighborhood_always_sees_kernel_squared_keys():
    grid = Grid((9, 11))
    for dilation in (1, 2):
        dense = dense_pattern(neighborhood(grid, 3, dilation), 1, 1, grid.n, grid.n)[0, 0]
        assert (dense.sum(-1) == 9).all()
        assert dense.diagonal().all()


def test_gna_stride_equal_to_kernel_is_blocked_attention():
    """An even stride's group shares the window of its right-hand centre query (as NATTEN's GNA), so
    stride = kernel tiles the sequence: on 12 tokens with kernel 4, queries 4..7 see exactly keys 4..7."""
    dense = dense_pattern(neighborhood(Grid([12]), 4, stride=4), 1, 1, 12, 12)[0, 0]
    blocks = torch.arange(12) // 4
    assert torch.equal(dense, blocks[:, None] == blocks[None, :])
    dense = dense_pattern(neighborhood(Grid([8, 6]), (4, 2), stride=(4, 2)), 1, 1, 48, 48)[0, 0]
    rows, cols = torch.arange(48) // 6 // 4, torch.arange(48) % 6 // 2
    assert torch.equal(dense, (rows[:, None] == rows[None, :]) & (cols[:, None] == cols[None, :]))


@pytest.mark.parametrize("name,params", [("sliding_window", {"window": 2}), ("dilated_window", {"window": 1, "dilation": 2})])
def test_non_causal_windows_shift_at_the_ends_as_na_and_dina_unless_clamped(name, params):
    """NA / DiNA: the window of 2 * window + 1 keys of the query's residue class shifts inwards at the ends."""
    spec, N, d = get(name), 11, params.get("dilation", 1)
    x = torch.zeros(1, 1, N, 4)
    pos = torch.arange(N)
    for border in ("shift", "clamp"):
        dense = dense_pattern(mask_of(spec, x, x, causal=False, border=border, **params), 1, 1, N, N)[0, 0]
        for i in range(N):
            same_class = pos[pos % d == i % d]  # the positions of i's residue class, in order
            sub = int((same_class < i).sum())
            lo = max(sub - params["window"], 0)
            if border == "shift":
                lo = min(lo, len(same_class) - 2 * params["window"] - 1)
            hi = min(sub + params["window"], len(same_class) - 1) if border == "clamp" else lo + 2 * params["window"]
            expected = torch.zeros(N, dtype=torch.bool)
            expected[same_class[lo : hi + 1]] = True
            assert torch.equal(dense[i], expected), f"{name} border={border} row {i}"
    assert "border='shift'" in spec.summary and spec.defaults["border"] == "shift"
    with pytest.raises(ValueError, match="border"):
        attnkit.attention(x, x, x, name, border="wrap", **params)


def test_tiled_order_makes_neighbourhoods_block_sparse():
    raster, tiled = Grid((64, 64)), Grid((64, 64), tile=(8, 8))
    perm = tiled.permutation()
    assert torch.equal(torch.sort(perm).values, torch.arange(4096))
    assert torch.equal(tiled.index(tiled.coords(torch.arange(4096))), torch.arange(4096))
    sizes = dict(batch=1, heads=1, q_len=4096, kv_len=4096, block_q=64, block_k=64)
    a, b = build_layout(neighborhood(raster, 15), **sizes), build_layout(neighborhood(tiled, 15), **sizes)
    assert a.pairs == b.pairs

    def useful(layout):  # allowed pairs / pairs in the visited tiles
        return layout.pairs / (int((layout.kind != 0).sum()) * 64 * 64)

    assert useful(b) > 1.5 * useful(a)


def test_bad_mask_parameters_are_refused():
    q = torch.randn(1, 2, 16, 8)
    with pytest.raises(ValueError, match="window"):
        attnkit.attention(q, q, q, "sliding_window", causal=True, window=-1)
    with pytest.raises(ValueError, match="doc_ids"):
        attnkit.attention(q, q, q, "document", causal=True, doc_ids=torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="block_q"):
        attnkit.attention(q, q, q, "sliding_window", causal=True, block_q=0)
