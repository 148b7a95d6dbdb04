"""Quest and Loki read the keys their equations choose, in any dtype, one-shot and while decoding."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.families import loki, quest


def _qkv(N=90, H=4, Hkv=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, h, N, D, generator=g, dtype=torch.float64) for h in (H, Hkv, Hkv))


def _kept_by_engine(sel, H):
    return sel.element_mask(H, causal=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_quest_selection_equals_the_equations(dtype):
    q, k, _ = _qkv(seed=1)
    for page, top_k in ((4, 3), (8, 2), (5, 40)):
        digest = quest.page_digest(k.to(dtype), page)
        sel = quest.quest_selection(q.to(dtype), digest, 90, page=page, top_k=top_k, chunk=17)
        assert torch.equal(sel.element_mask(4, causal=True), quest.reference_mask(q, k, page=page, top_k=top_k))


def test_quest_bounds_take_queries_in_any_layout():
    """Queries projected token-major and split into heads (a transposed view) get the bounds of their copy."""
    q, k, _ = _qkv(seed=3)
    digest = quest.page_digest(k, 4)
    heads_last = q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, H, N, D) over (B, N, H, D) memory
    assert torch.equal(quest.upper_bounds(heads_last, digest), quest.upper_bounds(q, digest))


def test_quest_bound_is_an_upper_bound_of_every_key_in_the_page():
    q, k, _ = _qkv(H=2, seed=2)
    mins, maxs = quest.page_bounds(k, 6)
    U = q.clamp(min=0) @ maxs.transpose(-1, -2) + q.clamp(max=0) @ mins.transpose(-1, -2)
    exact = (q @ k[:, :, : 15 * 6].transpose(-1, -2)).view(1, 2, 90, 15, 6).amax(-1)
    assert (U >= exact - 1e-12).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_loki_selection_equals_the_equations(dtype):
    q, k, _ = _qkv(seed=3)
    P = loki._inputs(q, k, None, torch.Generator().manual_seed(0))["components"]
    for rank, top_k in ((4, 5), (16, 9), (2, 200)):
        basis = P[:, :, :rank].to(dtype)
        index, valid = loki._chosen(q.to(dtype), loki._project(k.to(dtype), basis), basis, 90, top_k, 0, 90)
        kept = torch.zeros(1, 4, 90, 91, dtype=torch.bool).scatter(-1, torch.where(valid, index, 90), True)[..., :90]
        assert torch.equal(kept, loki.reference_mask(q, k, P, rank=rank, top_k=top_k))


def test_loki_components_find_the_keys_subspace():
    g = torch.Generator().manual_seed(4)
    basis = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64)).Q
    scales = torch.tensor([8.0, 4.0, 2.0] + [0.01] * 13, dtype=torch.float64)
    keys = (torch.randn(1, 1, 4000, 16, generator=g, dtype=torch.float64) * scales) @ basis.T
    P = loki.loki_components(keys)
    cosines = torch.linalg.svdvals(P[0, :, :3].T @ basis[:, :3])  # principal angles between the subspaces
    assert cosines.min() > 1 - 1e-4


def test_full_rank_and_full_budget_is_dense_attention():
    q, k, v = _qkv(N=40)
    P = loki._inputs(q, k, v, torch.Generator().manual_seed(0))["components"]
    dense = attnkit.attention(q, k, v, "softmax", causal=True)
    out = attnkit.attention(q, k, v, "loki", causal=True, components=P, rank=16, top_k=40)
    assert (out - dense).abs().max() < 1e-12
    out = attnkit.attention(q, k, v, "quest", causal=True, page=4, top_k=10)
    assert (out - dense).abs().max() < 1e-12


def test_decode_state_holds_the_digest_and_keeps_every_token():
    q, k, v = _qkv(N=30)
    _, state = attnkit.attention(q[:, :, :21], k[:, :, :21], v[:, :, :21], "quest", causal=True, page=4, top_k=2,
                                 return_state=True)
    assert state.k.shape[2] == 21 and state.digest(0).shape[3] == 5  # (B, Hkv, 2 D, pages): rows over the pages
    mins, maxs = quest.page_bounds(k[:, :, :21], 4)
    assert torch.equal(state.digest(0), torch.cat([maxs, mins], -1).mT)


def test_bad_inputs_are_refused():
    q, k, v = _qkv(N=20)
    P = loki._inputs(q, k, v, torch.Generator().manual_seed(0))["components"]
    with pytest.raises(ValueError, match="rank must be <= head_dim"):
        attnkit.attention(q, k, v, "loki", causal=True, components=P, rank=17)
    with pytest.raises((ValueError, TypeError), match="components"):
        attnkit.attention(q, k, v, "loki", causal=True, components=P[:1])
    with pytest.raises((ValueError, TypeError), match="components"):
        attnkit.attention(q, k, v, "loki", causal=True)
    with pytest.raises(ValueError, match="page"):
        attnkit.attention(q, k, v, "quest", causal=True, page=0)
