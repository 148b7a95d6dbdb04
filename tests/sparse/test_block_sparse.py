"""The block-sparse kernel against materialised attention: GQA, cross, chunked rows, modifiers, dispatch."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.builders.mask_pipeline import dense_pattern
from attnkit.kernels.auto_sparse import too_dense
from attnkit.kernels.block_sparse import block_sparse_attention
from attnkit.masks import build_layout, causal_mask
from attnkit.masks.base import MaskMod
from attnkit.masks.documents import document, lengths_to_ids
from attnkit.masks.window import head_windows, sliding_window
from attnkit.reference import materialised_attention
from attnkit.scores.alibi import alibi_mod
from attnkit.scores.normalisers import SOFTMAX, Normaliser
from attnkit.scores.softcap import softcap_mod

SIGMOID = Normaliser("sigmoid", "sum", torch.sigmoid)
SOFTPLUS = Normaliser("softplus", "ratio", torch.nn.functional.softplus)
COG = Normaliser("cog", "exp", signed=True)


def _case(mask, B, H, Hkv, Nq, Nk, D=16, Dv=12, seed=0, **layout_kw):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Nq, D, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, Hkv, Nk, D, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, Hkv, Nk, Dv, generator=g, dtype=torch.float64, requires_grad=True)
    layout = build_layout(mask, batch=B, heads=H, q_len=Nq, kv_len=Nk, **layout_kw)
    return q, k, v, layout, dense_pattern(mask, B, H, Nq, Nk)


def _check(out, ref, leaves, tol=1e-10):
    cot = torch.randn_like(ref)
    g_out = torch.autograd.grad((out * cot).sum(), leaves)
    g_ref = torch.autograd.grad((ref * cot).sum(), leaves)
    assert (out - ref).abs().max() < tol
    for a, b in zip(g_out, g_ref):
        assert (a - b).abs().max() < tol


@pytest.mark.parametrize("budget", [1 << 22, 300])  # 300: rows swept a tile at a time (online softmax)
@pytest.mark.parametrize("sizes", [(2, 4, 2, 45, 45), (1, 4, 1, 9, 70), (1, 2, 2, 70, 9)])
def test_softmax_fast_path_matches_reference(budget, sizes):
    mask = (sliding_window(11, 3) | document(lengths_to_ids([20, 30, 20, 20]))) & causal_mask()
    q, k, v, layout, dense = _case(mask, *sizes, block_q=8, block_k=16)
    out = block_sparse_attention(q, k, v, layout, scale=0.3, budget=budget)
    _check(out, materialised_attention(q, k, v, causal=False, mask=dense, scale=0.3), (q, k, v))


def test_per_head_layout_with_gqa():
    mask = head_windows(torch.tensor([1, 5, -1, 12])) & causal_mask()
    q, k, v, layout, dense = _case(mask, 2, 4, 2, 40, 40, block_q=8, block_k=8)
    assert layout.kind.shape[1] == 4
    out = block_sparse_attention(q, k, v, layout, scale=0.25)
    _check(out, materialised_attention(q, k, v, causal=False, mask=dense, scale=0.25), (q, k, v))


@pytest.mark.parametrize("mod,norm", [(alibi_mod(), SOFTMAX), (softcap_mod(2.0), SIGMOID), (None, SOFTPLUS), (None, COG)])
def test_score_modifiers_and_normalisers(mod, norm):
    mask = sliding_window(6, 2) & causal_mask()
    q, k, v, layout, dense = _case(mask, 1, 4, 2, 33, 33, block_q=8, block_k=8)
    out = block_sparse_attention(q, k, v, layout, scale=0.4, score_mod=mod, normaliser=norm)
    ref = materialised_attention(q, k, v, causal=False, mask=dense, scale=0.4, score_mod=mod, normaliser=norm)
    _check(out, ref, (q, k, v))


def test_per_head_score_modifier_on_per_head_layout():
    mask = head_windows(torch.tensor([1, 5, -1, 12])) & causal_mask()  # ALiBi's slopes differ per head too
    q, k, v, layout, dense = _case(mask, 2, 4, 2, 40, 40, block_q=8, block_k=8)
    out = block_sparse_attention(q, k, v, layout, scale=0.25, score_mod=alibi_mod())
    ref = materialised_attention(q, k, v, causal=False, mask=dense, scale=0.25, score_mod=alibi_mod())
    _check(out, ref, (q, k, v))


def test_fully_masked_rows_are_zero_without_nan():
    mask = sliding_window(3) & causal_mask() & ~document(lengths_to_ids([10, 30]))  # rows 10..12 see keys
    q, k, v, layout, dense = _case(mask, 1, 2, 2, 40, 40, block_q=8, block_k=8)
    blind = ~dense.any(-1).expand(1, 2, 40)  # rows that see no key
    assert blind.sum() == 2 * 37
    out = block_sparse_attention(q.float(), k.float(), v.float(), layout, scale=0.3)
    assert torch.isfinite(out).all()
    assert out[blind].abs().max() == 0, "a row that sees no key must output zeros"
    assert out[~blind].abs().amax(dim=-1).min() > 0, "rows that see keys must not be zeroed"
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert q.grad[blind].abs().max() == 0, "a row that sees no key has no gradient"


def test_layout_for_other_sizes_is_refused():
    q, k, v, layout, _ = _case(causal_mask(), 1, 2, 2, 16, 16, block_q=8, block_k=8)
    with pytest.raises(ValueError, match="layout was built"):
        block_sparse_attention(q[:, :, :8], k, v, layout, scale=1.0)


def test_softmax_dispatches_sparse_boolean_masks(monkeypatch):
    import attnkit.kernels.auto_sparse as auto

    monkeypatch.setattr(auto, "MIN_PAIRS", 1)
    monkeypatch.setattr(auto, "BLOCK", 16)
    q, k, v, _, dense = _case(sliding_window(8) & causal_mask(), 1, 2, 1, 130, 130)
    assert too_dense(q, k, v, causal=True, mask=dense) is None
    full = torch.ones(130, 130, dtype=torch.bool)[None, None]
    assert "non-empty" in too_dense(q, k, v, causal=True, mask=full)
    assert attnkit.explain(q, k, v, "softmax", causal=True, mask=dense).form == "block_sparse"
    assert attnkit.explain(q, k, v, "softmax", causal=True, mask=full).form == "sdpa"
    assert attnkit.explain(q, k, v, "softmax", causal=True, mask=full, form="block_sparse").form == "block_sparse"
    out = attnkit.attention(q, k, v, "softmax", causal=True, mask=dense)
    _check(out, materialised_attention(q, k, v, causal=True, mask=dense, scale=0.25), (q, k, v))


def test_content_dependent_layouts_are_not_reused():
    """hash_sparse reads q/k values: a second call with other inputs must not reuse the first layout."""
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(1, 2, 40, 8, generator=g, dtype=torch.float64) for _ in range(3))
        out = attnkit.attention(q, k, v, "hash_sparse", causal=True, buckets=4, block_q=8, block_k=8)
        ref = attnkit.attention(q, k, v, "hash_sparse", causal=True, buckets=4, form="reference")
        assert (out - ref).abs().max() < 1e-10


def test_rows_that_see_one_key_give_no_gradient_to_keys_in_float32():
    """A row whose softmax puts all its weight on one key has dS = 0 exactly, as in the reference's
    softmax backward: float32 rounding of rowsum(dO * O) against dP must not leak into dK and dQ
    (summed over many such rows it exceeded the reference's error tenfold)."""
    only_key_zero = MaskMod(lambda b, h, q, kv: kv == 0, name="only_key_zero")
    B, H, Nq, Nk = 2, 2, 129, 7
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, n, 64, generator=g).requires_grad_() for n in (Nq, Nk, Nk))
    layout = build_layout(only_key_zero, batch=B, heads=H, q_len=Nq, kv_len=Nk, block_q=8, block_k=8)
    out = block_sparse_attention(q, k, v, layout, scale=0.125)
    dq, dk = torch.autograd.grad((out * torch.randn(out.shape, generator=g)).sum(), (q, k))
    assert (dq == 0).all() and (dk == 0).all()
