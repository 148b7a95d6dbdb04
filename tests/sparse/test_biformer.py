"""Bi-level routing attention: region routing and token attention as the paper's equations; the NCHW module."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.families.biformer import region_affinity, routed_regions
from attnkit.nn.vision import BiLevelRoutingAttention


def _qkv(N=45, H=4, Hkv=2, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, H, N, D, generator=g, dtype=torch.float64),
            torch.randn(1, Hkv, N, D, generator=g, dtype=torch.float64),
            torch.randn(1, Hkv, N, D, generator=g, dtype=torch.float64))


def test_both_forms_follow_the_equations_region_by_region():
    q, k, v = _qkv()
    S, top = 8, 3
    H, N = 4, 45
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    regions = [list(range(s, min(s + S, N))) for s in range(0, N, S)]
    qr = torch.stack([q[0, :, r].mean(1).flatten() for r in regions])  # full width: heads concatenated
    kr = torch.stack([kk[0, :, r].mean(1).flatten() for r in regions])
    A = qr @ kr.T
    expected = torch.zeros_like(q)
    for i, r in enumerate(regions):
        routed = sorted(range(len(regions)), key=lambda j: (-float(A[i, j]), j))[:top]
        keys = [t for j in routed for t in regions[j]]
        for h in range(H):
            w = torch.softmax(q[0, h, r] @ kk[0, h, keys].T / 8**0.5, dim=-1)
            expected[0, h, r] = w @ vv[0, h, keys]
    assert torch.allclose(region_affinity(q, k, S)[0], A)
    for form in ("reference", "selected_blocks"):
        out = attnkit.attention(q, k, v, "bilevel_routing", form=form, region_size=S, top_k=top)
        assert (out - expected).abs().max() < 1e-12, form


def test_float32_and_float64_route_alike_without_near_ties():
    q, k, _ = _qkv(N=200, seed=1)
    gaps = region_affinity(q, k, 8).sort(dim=-1).values.diff(dim=-1)
    assert gaps.min() > 1e-6
    assert torch.equal(routed_regions(q, k, region_size=8, top_k=4), routed_regions(q.float(), k.float(),
                                                                                    region_size=8, top_k=4))


def test_routing_takes_no_gradient_and_top_k_is_capped():
    q, k, v = (t.requires_grad_(True) for t in _qkv(N=20, seed=2))
    out = attnkit.attention(q, k, v, "bilevel_routing", region_size=8, top_k=10)  # 3 regions: all of them
    dense = attnkit.attention(q, k, v, "softmax")
    assert (out - dense).abs().max() < 1e-12
    assert routed_regions(q, k, region_size=8, top_k=2).requires_grad is False


def test_module_on_a_map_equals_window_by_window_attention():
    torch.manual_seed(0)
    m = BiLevelRoutingAttention(8, heads=2, n_win=2, top_k=2, side_dwconv=3).double()
    x = torch.randn(1, 8, 4, 6, dtype=torch.float64)
    q, k, v = m.qkv(x).chunk(3, dim=1)
    windows = [[(r, c) for r in range(a * 2, a * 2 + 2) for c in range(b * 3, b * 3 + 3)] for a in range(2) for b in range(2)]
    pick = lambda t, w: torch.stack([t[0, :, r, c] for r, c in w])  # noqa: E731  (tokens, channels)
    qr = torch.stack([pick(q, w).mean(0) for w in windows])
    kr = torch.stack([pick(k, w).mean(0) for w in windows])
    A = qr @ kr.T
    o = torch.zeros(1, 8, 4, 6, dtype=torch.float64)
    for i, w in enumerate(windows):
        keys = [t for j in A[i].topk(2).indices.tolist() for t in windows[j]]
        for h in range(2):
            ch = slice(4 * h, 4 * h + 4)
            att = torch.softmax(pick(q, w)[:, ch] @ pick(k, keys)[:, ch].T * 8**-0.5, dim=-1) @ pick(v, keys)[:, ch]
            for t, (r, c) in enumerate(w):
                o[0, ch, r, c] = att[t]
    expected = m.out(o + m.lce(v))
    assert (m(x) - expected).abs().max() < 1e-12


def test_module_refuses_maps_the_windows_do_not_divide():
    m = BiLevelRoutingAttention(8, heads=2, n_win=3)
    with pytest.raises(ValueError, match="n_win=3"):
        m(torch.randn(1, 8, 7, 9))
    with pytest.raises(ValueError, match="side_dwconv"):
        BiLevelRoutingAttention(8, heads=2, side_dwconv=4)
