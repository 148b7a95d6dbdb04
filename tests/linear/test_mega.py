"""Mega: the damped EMA's three forms agree; the layer is causal and decodes incrementally."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.families.mega import laplace, relu2
from attnkit.nn.mega import DampedEMA, MegaLayer


def test_ema_forms_agree():
    torch.manual_seed(0)
    ema = DampedEMA(6, ndim=3).double()
    x = torch.randn(2, 37, 6, dtype=torch.float64)
    ref = ema(x, form="reference")
    torch.testing.assert_close(ema(x, form="fft"), ref)
    torch.testing.assert_close(ema.ema_step(x, None)[0], ref)
    # pieces carried through the state equal one call
    a, h = ema.ema_step(x[:, :10], None)
    b, _ = ema.ema_step(x[:, 10:], h)
    torch.testing.assert_close(torch.cat([a, b], dim=1), ref)


def test_ema_is_the_damped_recurrence():
    ema = DampedEMA(1, ndim=1).double()
    x = torch.zeros(1, 5, 1, dtype=torch.float64)
    x[0, 0, 0] = 1.0
    alpha, delta = torch.sigmoid(ema.alpha).item(), torch.sigmoid(ema.delta).item()
    expected = [ema.eta.item() * alpha * ema.beta.item() * (1 - alpha * delta) ** t for t in range(5)]
    torch.testing.assert_close(ema(x, form="reference")[0, :, 0], torch.tensor(expected, dtype=torch.float64))


def test_layer_is_causal_and_decodes_incrementally():
    torch.manual_seed(0)
    layer = MegaLayer(8, z_dim=16).double()
    x = torch.randn(2, 21, 8, dtype=torch.float64)
    whole = layer(x)
    x2 = x.clone()
    x2[:, 12:] = torch.randn(2, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(layer(x2)[:, :12], whole[:, :12])
    state, outs = None, []
    for a, b in ((0, 5), (5, 6), (6, 21)):
        y, state = layer(x[:, a:b], state=state, return_state=True)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, dim=1), whole)
    whole.sum().backward()
    assert layer.ema.alpha.grad is not None


def test_bad_ema_form_is_refused():
    with pytest.raises(ValueError, match="form"):
        DampedEMA(4)(torch.randn(1, 3, 4), form="scan")


def test_attention_functions_are_megas():
    x = torch.tensor([-1.0, 0.0, 0.5, 2.0], dtype=torch.float64)
    torch.testing.assert_close(relu2(x), torch.tensor([0.0, 0.0, 0.25, 4.0], dtype=torch.float64))
    # laplace is the normal CDF with mu = sqrt(1/2), sigma = sqrt(1/(4 pi)): 1/2 at mu
    torch.testing.assert_close(laplace(torch.tensor([0.5**0.5], dtype=torch.float64)),
                               torch.tensor([0.5], dtype=torch.float64))


def _qkv(N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 1, N, 8, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("fn", ["softmax", "relu2", "laplace"])
def test_mega_chunk_is_attention_inside_each_chunk(fn):
    q, k, v = _qkv(20)
    bias = 0.1 * torch.randn(2 * 8 - 1, dtype=torch.float64)
    whole = attnkit.attention(q, k, v, "mega", causal=True, attention_fn=fn, chunk_size=8, rel_bias=bias)
    for s in range(0, 20, 8):
        piece = attnkit.attention(q[:, :, s:s + 8], k[:, :, s:s + 8], v[:, :, s:s + 8], "mega", causal=True,
                                  attention_fn=fn, rel_bias=bias)  # plain attention over the chunk alone
        torch.testing.assert_close(whole[:, :, s:s + 8], piece)


def test_element_functions_divide_by_the_row_length():
    q, k, v = _qkv(6, seed=1)
    out = attnkit.attention(q, k, v, "mega", causal=True, attention_fn="relu2", scale=1.0)
    scores = (q @ k.transpose(-1, -2)) / torch.arange(1, 7, dtype=torch.float64)[:, None]
    expected = (relu2(scores) * torch.ones(6, 6, dtype=torch.bool).tril()) @ v
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("fn", ["softmax", "relu2"])
def test_fast_form_matches_reference_beyond_the_suite_setting(fn):
    q, k, v = _qkv(45, seed=2)
    bias = 0.1 * torch.randn(2 * 45 - 1, dtype=torch.float64)
    kw = {"attention_fn": fn, "rel_bias": bias, "q_chunk": 16, "kv_chunk": 16}
    ref = attnkit.attention(q, k, v, "mega", causal=True, form="reference", **kw)
    torch.testing.assert_close(attnkit.attention(q, k, v, "mega", causal=True, **kw), ref)


def test_bad_mega_parameters_are_refused():
    q, k, v = _qkv(5)
    with pytest.raises(ValueError, match="attention_fn"):
        attnkit.attention(q, k, v, "mega", attention_fn="gelu")
    with pytest.raises(ValueError, match="rel_bias"):
        attnkit.attention(q, k, v, "mega", rel_bias=torch.zeros(3, dtype=torch.float64))


def test_chunked_laplace_layer_decodes_incrementally():
    torch.manual_seed(0)
    layer = MegaLayer(8, z_dim=16, attention_fn="laplace", chunk_size=4).double()
    x = torch.randn(1, 11, 8, dtype=torch.float64)
    whole = layer(x)
    state, outs = None, []
    for a, b in ((0, 3), (3, 4), (4, 11)):
        y, state = layer(x[:, a:b], state=state, return_state=True)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, dim=1), whole)
    whole.sum().backward()
    assert layer.rel_bias.grad is not None and layer.rel_bias.grad.abs().sum() > 0


def test_relative_bias_is_indexed_by_offset_like_megas():
    """Mega's SimpleRelativePositionalBias gives pair (i, j) the entry (j - i) + L - 1."""
    _, k, v = _qkv(5, seed=3)
    q = torch.zeros_like(k)  # scores are the bias alone
    L = 7
    bias = torch.linspace(0.1, 1.3, 2 * L - 1, dtype=torch.float64)
    out = attnkit.attention(q, k, v, "mega", causal=True, attention_fn="relu2", rel_bias=bias)
    i, j = torch.arange(5)[:, None], torch.arange(5)[None, :]
    weights = relu2(bias[j - i + L - 1]) * (j <= i)
    torch.testing.assert_close(out, weights @ v)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 4])
@pytest.mark.parametrize("mask_kind", ["padding", "pairs", "additive"])
def test_element_functions_count_the_keys_a_mask_allows(causal, chunk_size, mask_kind):
    """Under a user mask ``n_i`` is the number of keys query ``i`` may attend to (Mega's ``lengths``)."""
    g = torch.Generator().manual_seed(3)
    B, N, D = 2, 10, 4
    q, k, v = (torch.randn(B, 1, N, D, generator=g, dtype=torch.float64) for _ in range(3))
    if mask_kind == "padding":
        allowed = torch.ones(B, 1, 1, N, dtype=torch.bool)
        allowed[0, ..., 7:] = False
    else:
        allowed = torch.rand(B, 1, N, N, generator=g) < 0.7
    mask = allowed if mask_kind != "additive" else torch.zeros(allowed.shape, dtype=torch.float64).masked_fill(~allowed, float("-inf"))
    expected = torch.zeros_like(q)
    for b in range(B):
        for i in range(N):
            keys = [j for j in range(N) if allowed[b, 0, min(i, allowed.shape[2] - 1), j]
                    and (not causal or j <= i) and (chunk_size is None or j // chunk_size == i // chunk_size)]
            for j in keys:
                expected[b, 0, i] += laplace(q[b, 0, i] @ k[b, 0, j] / len(keys)) * v[b, 0, j]
    forms = ("reference", "chunked", "block_diagonal", None) if chunk_size else ("reference", "chunked", None)
    for form in forms:
        out = attnkit.attention(q, k, v, "mega", causal=causal, mask=mask, scale=1.0, form=form,
                                attention_fn="laplace", chunk_size=chunk_size)
        assert torch.allclose(out, expected, atol=1e-12), form
    if chunk_size is None:  # no Mega-chunks: the block-diagonal form says so rather than running another one
        with pytest.raises(ValueError, match="block_diagonal.*cannot run this call: chunk_size=None"):
            attnkit.attention(q, k, v, "mega", causal=causal, mask=mask, form="block_diagonal", attention_fn="laplace")


@pytest.mark.parametrize("attention_fn", ["laplace", "relu2"])
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_cross_attention_with_more_queries_than_keys_and_a_mask(attention_fn, chunk_size):
    """Queries before the first key count no keys there: every form agrees, and an all-True mask is no mask."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 9, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 5, 8, generator=g, dtype=torch.float64) for _ in range(2))
    mask = torch.rand(1, 1, 9, 5, generator=g) > 0.3
    kw = dict(attention_fn=attention_fn, chunk_size=chunk_size)
    ref = attnkit.attention(q, k, v, "mega", mask=mask, form="reference", **kw)
    for form in attnkit.spec("mega").fast:
        if form == "block_diagonal":  # self-attention with Mega-chunks only: it refuses cross calls
            continue
        torch.testing.assert_close(attnkit.attention(q, k, v, "mega", mask=mask, form=form, **kw), ref)
    everything = torch.ones(1, 1, 9, 5, dtype=torch.bool)
    torch.testing.assert_close(attnkit.attention(q, k, v, "mega", mask=everything, **kw),
                               attnkit.attention(q, k, v, "mega", **kw))
