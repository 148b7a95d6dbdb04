"""MoBA's selection: the fast form routes exactly as the paper's equations, in any dtype."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.families.moba import moba_pairs, moba_selection, reference_mask


def _qk(N=100, H=4, Hkv=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, H, N, D, generator=g, dtype=torch.float64), torch.randn(1, Hkv, N, D, generator=g,
                                                                                dtype=torch.float64)


def test_fast_selection_equals_the_gate_equations():
    q, k = _qk()
    for block_size, top_k in ((8, 3), (16, 2), (7, 20)):
        sel = moba_selection(q, k, block_size=block_size, top_k=top_k, chunk=33)
        expected = reference_mask(q, k, block_size=block_size, top_k=top_k)
        assert torch.equal(sel.element_mask(4, causal=True), expected)


def test_float32_and_float64_select_the_same_blocks():
    q, k = _qk(seed=3)
    a = moba_selection(q, k, block_size=8, top_k=4).element_mask(4, causal=True)
    b = moba_selection(q.float(), k.float(), block_size=8, top_k=4).element_mask(4, causal=True)
    assert torch.equal(a, b)


def test_every_query_keeps_its_current_block_and_never_its_future():
    q, k = _qk()
    mask = reference_mask(q, k, block_size=8, top_k=2)
    t = torch.arange(100)
    own = (t[None, :] // 8 == t[:, None] // 8) & (t[None, :] <= t[:, None])
    assert mask[:, :, own].all()
    assert not mask[:, :, t[None, :] > t[:, None]].any()
    assert mask.sum().item() == 4 * moba_pairs(100, 100, 8, 2)


def test_bad_block_size_and_top_k_are_refused():
    q, k = _qk(N=16)
    with pytest.raises(ValueError, match="block_size"):
        attnkit.attention(q, k, k, "moba", causal=True, block_size=0)
    with pytest.raises(TypeError, match="top_k"):
        attnkit.attention(q, k, k, "moba", causal=True, top_k=2.5)
