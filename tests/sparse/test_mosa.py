"""MoSA: expert-choice selection and attention among the selected tokens, as the paper's equations."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.families.mosa import mosa_inputs, mosa_selection, selected_count


def _inputs(T=40, H=4, Hkv=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, T, D, generator=g, dtype=torch.float64)
    k = torch.randn(1, Hkv, T, D, generator=g, dtype=torch.float64)
    v = torch.randn(1, Hkv, T, D, generator=g, dtype=torch.float64)
    return q, k, v, mosa_inputs(q, k, v, g)["router"]


def _by_loops(q, k, v, r, sparsity, causal):
    """Per head: I = top-k of r; Y_i = r_i softmax_{j in I, j <= i}(q_i k_j / sqrt d) v_j for i in I, else 0."""
    B, H, T, D = q.shape
    n = selected_count(T, sparsity)
    out = torch.zeros_like(q)
    for h in range(H):
        kv = h // (H // k.shape[1])
        chosen = sorted(sorted(range(T), key=lambda t: (-float(r[0, h, t]), t))[:n])
        for i in chosen:
            js = [j for j in chosen if j <= i or not causal]
            w = torch.softmax(q[0, h, i] @ k[0, kv, js].T / D**0.5, dim=0)
            out[0, h, i] = r[0, h, i] * (w @ v[0, kv, js])
    return out


@pytest.mark.parametrize("causal", [True, False])
def test_both_forms_equal_the_equations_head_by_head(causal):
    q, k, v, r = _inputs()
    expected = _by_loops(q, k, v, r, 4, causal)
    for form in ("reference", "gathered"):
        out = attnkit.attention(q, k, v, "mosa", causal=causal, form=form, sparsity=4, router=r)
        assert (out - expected).abs().max() < 1e-12, form


def test_selection_is_the_top_k_in_any_dtype_and_k_is_clamped():
    _, _, _, r = _inputs(T=300, seed=1)
    gaps = r.sort(dim=-1).values.diff(dim=-1)
    assert gaps.min() > 1e-6  # no near-ties in this draw
    assert torch.equal(mosa_selection(r, 8), mosa_selection(r.float(), 8))
    sel = mosa_selection(r, 8)
    assert sel.shape[-1] == 300 // 8 and (sel.diff(dim=-1) > 0).all()
    kept = r.gather(2, sel).min(dim=-1).values
    others = r.masked_fill(torch.zeros_like(r, dtype=torch.bool).scatter(2, sel, True), -1).max(dim=-1).values
    assert (kept > others).all()
    assert [selected_count(T, 8) for T in (1, 2, 7, 16, 17, 100)] == [1, 2, 2, 2, 2, 12]


def test_future_qkv_never_change_the_past_but_a_future_router_score_changes_the_choice():
    q, k, v, r = _inputs(T=32, seed=2)
    base = attnkit.attention(q, k, v, "mosa", causal=True, sparsity=4, router=r)
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[:, :, 20:] = torch.randn_like(x[:, :, 20:])
    out = attnkit.attention(q2, k2, v2, "mosa", causal=True, sparsity=4, router=r)
    assert (out[:, :, :20] - base[:, :, :20]).abs().max() < 1e-12
    # expert choice over the whole sequence: raising a late token's score drops an earlier token from the choice
    r2 = r.clone()
    r2[:, :, 31] = 2.0
    moved = attnkit.attention(q, k, v, "mosa", causal=True, sparsity=4, router=r2)
    assert (moved[:, :, :31] - base[:, :, :31]).abs().max() > 1e-3


def test_unselected_positions_output_zero_and_the_router_gets_gradients():
    q, k, v, r = _inputs(T=24, seed=3)
    r = r.clone().requires_grad_(True)
    out = attnkit.attention(q, k, v, "mosa", causal=True, sparsity=4, router=r)
    chosen = torch.zeros(1, 4, 24, dtype=torch.bool).scatter(2, mosa_selection(r, 4), True)
    assert (out[~chosen] == 0).all() and (out[chosen].abs().sum(-1) > 0).all()
    (grad,) = torch.autograd.grad(out.sum(), r)
    assert (grad[~chosen] == 0).all() and (grad[chosen] != 0).all()


def test_bad_router_and_sparsity_are_refused():
    q, k, v, r = _inputs(T=8)
    with pytest.raises(ValueError, match="router"):
        attnkit.attention(q, k, v, "mosa", causal=True, router=r[:, :2])
    with pytest.raises(TypeError, match="router"):
        attnkit.attention(q, k, v, "mosa", causal=True, router=r.float())
    with pytest.raises((TypeError, ValueError), match="sparsity"):
        attnkit.attention(q, k, v, "mosa", causal=True, router=r, sparsity=0)


def test_layer_learns_its_router():
    torch.manual_seed(0)
    layer = attnkit.nn.Attention(32, heads=4, mechanism="mosa", sparsity=4)
    layer(torch.randn(2, 40, 32), causal=True).square().mean().backward()
    assert layer.inputs.proj.weight.grad.abs().max() > 0
