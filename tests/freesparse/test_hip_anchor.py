"""HiP's tree search and AnchorAttention's stripes choose what their equations choose, in any dtype."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.builders.estimated_sparse import selection_report
from attnkit.families import anchor_attention, hip


def _qkv(N, H=4, Hkv=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, h, N, D, generator=g, dtype=torch.float64) for h in (H, Hkv, Hkv))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hip_search_equals_the_equations(dtype):
    for N, block, top_k in ((129, 8, 3), (117, 8, 4), (200, 10, 2), (300, 8, 5), (64, 8, 1)):
        q, k, _ = _qkv(N, seed=N)
        ref = hip.reference_layout(q, k, scale=0.25, block=block, top_k=top_k)
        fast = hip.hip_layout(q.to(dtype), k.to(dtype), scale=0.25, block=block, top_k=top_k)
        assert torch.equal(fast, ref), (N, block, top_k)
        assert (ref.sum(-1) == torch.arange(ref.shape[-1]).clamp(max=top_k - 1) + 1).all()  # top_k - 1 + diagonal


def test_hip_finds_a_planted_region():
    """A run of key blocks matching the last query block (attention locality) is found far back in the past."""
    q, k, v = _qkv(256, H=1, Hkv=1)
    k[:, :, 32:128] += q[:, :, 248:256].mean(2, keepdim=True) * 4  # key blocks 4 .. 15
    found = hip.hip_layout(q, k, scale=0.25, block=8, top_k=3)[0, 0, -1].nonzero().flatten().tolist()
    assert len(found) == 3 and found[-1] == 31 and all(4 <= b <= 15 for b in found[:-1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_anchor_stripes_equal_the_equations(dtype):
    for N, block, init, theta in ((129, 16, 8, 1.0), (117, 8, 0, 2.0), (200, 10, 12, 0.5), (64, 16, 100, 1.0)):
        q, k, v = _qkv(N, seed=N)
        ref = anchor_attention.reference_mask(q, k, scale=0.25, block=block, init=init, theta=theta)
        kept, density = anchor_attention.attended(q.to(dtype), k.to(dtype), torch.arange(N), scale=0.25, block=block,
                                                  init=init, theta=theta)
        assert torch.equal(kept, ref), (N, block, init, theta)
        assert density == pytest.approx(float(ref.sum()) / (4 * N * (N + 1) / 2))


def test_anchor_attention_attends_exactly_the_kept_keys():
    q, k, v = _qkv(150, seed=3)
    p = dict(block=16, init=8, theta=1.5)
    kept = anchor_attention.reference_mask(q, k, scale=0.25, **p)
    assert 0.1 < float(kept.sum()) / (4 * 150 * 151 / 2) < 0.9  # a real choice, not all or nothing
    out = attnkit.attention(q, k, v, "anchor_attention", causal=True, scale=0.25, **p)
    masked = attnkit.attention(q, k, v, "softmax", mask=kept, scale=0.25)
    assert (out - masked).abs().max() < 1e-12


def test_reports_and_bad_parameters():
    q, k, v = _qkv(128, seed=4)
    for name, p in (("hip", dict(block=8, top_k=3)), ("anchor_attention", dict(block=16, init=8, theta=1.0))):
        report = selection_report(name, q, k, v, rows=64, **p)
        assert 0 < report["density"] < 1 and 0 < report["recall"] < 1 and report["output_rel_error"] > 0
    with pytest.raises(ValueError, match="theta"):
        attnkit.attention(q, k, v, "anchor_attention", causal=True, theta=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        attnkit.attention(q, k, v, "hip", causal=True, top_k=0)
