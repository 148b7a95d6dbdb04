"""Adamas reads the keys its equations choose: the fast distance (thermometer codes, one product) picks what the
float64 reference (codes and Manhattan distances written out) picks, one-shot and while decoding."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.families import adamas


def _qkv(N=90, H=4, Hkv=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, h, N, D, generator=g, dtype=torch.float64) for h in (H, Hkv, Hkv))


def _kept(index, valid, N):
    out = torch.zeros(*index.shape[:3], N + 1, dtype=torch.bool)
    return out.scatter(-1, torch.where(valid, index, N), True)[..., :N]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("D", [16, 12])
def test_selection_equals_the_equations(dtype, D):
    q, k, _ = _qkv(D=D, seed=1)
    for top_k, threshold in ((5, 2.0), (9, 4.0), (200, 1.0)):
        codes = adamas.codes(k.to(dtype), threshold)
        index, valid = adamas._chosen(q.to(dtype), codes, 90, top_k, threshold, 0, 90)
        assert torch.equal(_kept(index, valid, 90), adamas.reference_mask(q, k, top_k=top_k, threshold=threshold))


def test_codes_and_distance_follow_the_definition():
    x = torch.tensor([[3.0, -1.0, 0.5, 0.25]], dtype=torch.float64)
    y = x @ torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float64)
    # y = (2.75, 4.25, 1.25, 3.75): with t = 3 the codes are (2, 3, 2, 3)
    assert torch.equal(y, torch.tensor([[2.75, 4.25, 1.25, 3.75]], dtype=torch.float64))
    assert adamas.codes(x, 3.0).tolist() == [[2, 3, 2, 3]]
    assert adamas.padded_dim(12) == 16 and adamas.hadamard(12, dtype=torch.float64, device="cpu").shape == (12, 16)


def test_every_query_reads_its_own_key_and_decode_equals_one_shot():
    q, k, v = _qkv(N=40, seed=2)
    kept = adamas.reference_mask(q, k, top_k=4, threshold=2.0)
    assert kept.diagonal(dim1=-2, dim2=-1).all() and (kept.sum(-1) == torch.arange(40).clamp(max=3) + 1).all()
    one_shot = attnkit.attention(q, k, v, "adamas", causal=True, top_k=4, threshold=2.0)
    out, state = attnkit.attention(q[:, :, :30], k[:, :, :30], v[:, :, :30], "adamas", causal=True, top_k=4,
                                   threshold=2.0, return_state=True)
    steps = [out]
    for t in range(30, 40):
        out, state = attnkit.attention(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], "adamas", causal=True,
                                       top_k=4, threshold=2.0, state=state, return_state=True)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 2), one_shot, rtol=1e-12, atol=1e-12)
    assert torch.equal(state.digest(0), adamas.codes(k, 2.0))


def test_bad_parameters_are_refused():
    q, k, v = _qkv(N=8)
    with pytest.raises(ValueError, match="top_k"):
        attnkit.attention(q, k, v, "adamas", causal=True, top_k=0)
    with pytest.raises(ValueError, match="threshold"):
        attnkit.attention(q, k, v, "adamas", causal=True, threshold=-1.0)
