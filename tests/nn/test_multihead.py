"""attnkit.nn.MultiheadAttention equals torch.nn.MultiheadAttention (same weights) with the softmax mechanism."""
from __future__ import annotations

import pytest
import torch

from attnkit.nn import MultiheadAttention

E, H, L, S, B = 16, 4, 5, 7, 3


def _pair(**kw):
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(E, H, **kw).double()
    ours = MultiheadAttention(E, H, **kw).double()
    ours.load_state_dict(ref.state_dict())
    return ref.eval(), ours.eval()


def _inputs(batch_first, kdim=E, vdim=E, same=False):
    g = torch.Generator().manual_seed(1)
    shape = lambda n, d: (B, n, d) if batch_first else (n, B, d)  # noqa: E731
    q = torch.randn(shape(L if not same else S, E), generator=g, dtype=torch.float64)
    if same:
        return q, q, q
    return (q, torch.randn(shape(S, kdim), generator=g, dtype=torch.float64),
            torch.randn(shape(S, vdim), generator=g, dtype=torch.float64))


def _check(ref, ours, args, **kw):
    want, want_w = ref(*args, **kw)
    got, got_w = ours(*args, **kw)
    torch.testing.assert_close(got, want)
    if want_w is None:
        assert got_w is None
    else:
        torch.testing.assert_close(got_w, want_w)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")  # torch warns on mixed mask types
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("need_weights,average", [(True, True), (True, False), (False, True)])
def test_matches_torch_with_masks(batch_first, need_weights, average):
    ref, ours = _pair(batch_first=batch_first)
    args = _inputs(batch_first)
    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[1, -3:] = True
    attn = torch.rand(L, S, generator=torch.Generator().manual_seed(2)) < 0.3
    attn[:, 0] = False  # every query keeps one key: torch gives NaN for empty rows, attnkit zeros
    float_attn = torch.randn(B * H, L, S, dtype=torch.float64)
    for masks in ({}, {"key_padding_mask": pad}, {"attn_mask": attn}, {"attn_mask": float_attn, "key_padding_mask": pad},
                  {"attn_mask": attn, "key_padding_mask": pad.double() * -3.0}):
        _check(ref, ours, args, need_weights=need_weights, average_attn_weights=average, **masks)


@pytest.mark.parametrize("batch_first", [False, True])
def test_matches_torch_with_bias_kv_zero_attn_kdim_vdim_and_causal(batch_first):
    ref, ours = _pair(batch_first=batch_first, add_bias_kv=True, add_zero_attn=True, kdim=6, vdim=10)
    args = _inputs(batch_first, 6, 10)
    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[0, 2] = True
    _check(ref, ours, args, key_padding_mask=pad)
    _check(ref, ours, args, need_weights=False)
    ref, ours = _pair(batch_first=batch_first, bias=False)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(S, dtype=torch.float64)
    self_args = _inputs(batch_first, same=True)
    for need_weights in (False, True):
        _check(ref, ours, self_args, attn_mask=causal, is_causal=True, need_weights=need_weights)


def test_unbatched_inputs_and_gradients():
    ref, ours = _pair()
    q, k, v = (t[:, 0] for t in _inputs(False))
    _check(ref, ours, (q, k, v))
    ours.train()
    out, _ = ours(q, k, v, need_weights=False)
    out.sum().backward()
    assert all(p.grad is not None for p in ours.parameters())


def test_other_mechanisms_run_and_refuse_weights():
    mha = MultiheadAttention(E, H, mechanism="softcap", cap=3.0, batch_first=True)
    x = torch.randn(B, L, E)
    causal = torch.ones(L, L, dtype=torch.bool).triu(1)
    out, w = mha(x, x, x, need_weights=False, attn_mask=causal, is_causal=True)
    assert out.shape == (B, L, E) and w is None
    with pytest.raises(ValueError, match="need_weights"):
        mha(x, x, x)
    with pytest.raises(ValueError, match="dropout"):
        MultiheadAttention(E, H, dropout=0.1, mechanism="alibi").train()(x, x, x, need_weights=False)
    with pytest.raises(ValueError, match="causal mask"):
        mha(x, x, x, need_weights=False, attn_mask=~causal, is_causal=True)


def test_bad_inputs_are_refused():
    mha = MultiheadAttention(E, H)
    x = torch.randn(L, B, E)
    with pytest.raises(ValueError, match="embed_dim"):
        MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="query"):
        mha(torch.randn(L, B, E + 1), x, x)
    with pytest.raises(ValueError, match="key_padding_mask"):
        mha(x, x, x, key_padding_mask=torch.zeros(B, L + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask"):
        mha(x, x, x, attn_mask=torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="attn_mask"):
        mha(x, x, x, attn_mask=torch.zeros(L, L, dtype=torch.int64))
    with pytest.raises(ValueError, match="is_causal"):
        mha(x, x, x, is_causal=True)
