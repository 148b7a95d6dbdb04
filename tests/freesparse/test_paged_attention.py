"""The decode kernel reads exactly the chosen pages: equal to masked softmax over them, gradients included."""
from __future__ import annotations

import pytest
import torch

from attnkit.kernels.gathered_keys import paged_attention


def _masked(q, k, v, pages, valid, page, scale):
    """Softmax over the keys of the valid pages up to each query's position, from a materialised mask."""
    B, H, Nq, _ = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    kk, vv = (x.repeat_interleave(H // Hkv, 1) for x in (k, v))
    pos = torch.arange(Nk - Nq, Nk)[:, None]
    key_page = torch.arange(Nk) // page
    named = (key_page == torch.where(valid, pages, -1)[..., None]).any(-2)  # (B, H, Nq, Nk)
    keep = named & (torch.arange(Nk) <= pos)
    s = (q @ kk.transpose(-1, -2) * scale).masked_fill(~keep, float("-inf"))
    return torch.softmax(s, -1).nan_to_num(0.0) @ vv


@pytest.mark.parametrize("B,H,Hkv,Nq,Nk,D,Dv,page,K", [
    (2, 4, 2, 5, 37, 8, 6, 4, 3),   # GQA, a partial last page, several queries
    (1, 2, 1, 1, 40, 8, 8, 4, 4),   # a decode step, whole pages only
    (1, 3, 3, 7, 7, 4, 4, 1, 3),    # pages of one key (top-k keys)
    (1, 2, 2, 3, 3, 4, 4, 8, 1),    # no complete page
])
@pytest.mark.parametrize("budget", [1, 1 << 18])
def test_paged_attention_equals_masked_softmax(B, H, Hkv, Nq, Nk, D, Dv, page, K, budget):
    g = torch.Generator().manual_seed(Nk + K)
    q = torch.randn(B, H, Nq, D, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, Hkv, Nk, D, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, Hkv, Nk, Dv, generator=g, dtype=torch.float64, requires_grad=True)
    pages = torch.rand(B, H, Nq, -(-Nk // page), generator=g).argsort(-1)[..., :K]  # distinct pages per query
    valid = torch.rand(B, H, Nq, K, generator=g) > 0.3
    valid[0, 0, 0] = False  # a query with nothing to read: zeros, no NaN
    out = paged_attention(q, k, v, pages, valid, page=page, scale=0.3, budget=budget)
    want = _masked(q, k, v, pages, valid, page, 0.3)
    assert (out - want).abs().max() < 1e-12
    assert torch.equal(out[0, 0, 0], torch.zeros(Dv, dtype=torch.float64))
    got, expected = torch.autograd.grad(out.sum(), (q, k, v)), torch.autograd.grad(want.sum(), (q, k, v))
    for a, b in zip(got, expected):
        assert torch.isfinite(a).all() and (a - b).abs().max() < 1e-12


def test_keys_are_read_in_place_from_any_layout():
    """A cache's buffer (a prefix of a longer tensor), a (B, N, H, D) tensor seen as (B, H, N, D) and keys
    repeated along the tokens give what their contiguous copies give."""
    g = torch.Generator().manual_seed(7)
    B, H, Hkv, Nk, D = 2, 4, 2, 21, 8
    q = torch.randn(B, H, 2, D, generator=g, dtype=torch.float64)
    pages = torch.rand(B, H, 2, 6, generator=g).argsort(-1)[..., :3]
    valid = torch.ones(B, H, 2, 3, dtype=torch.bool)
    buffer = torch.randn(B, Hkv, 40, D, generator=g, dtype=torch.float64)
    tokens_first = torch.randn(B, Nk, Hkv, D, generator=g, dtype=torch.float64)
    repeated = torch.randn(B, Hkv, 1, D, generator=g, dtype=torch.float64).expand(B, Hkv, Nk, D)
    for k, v in ((buffer[:, :, :Nk], buffer[:, :, 5:5 + Nk]), (tokens_first.transpose(1, 2), repeated)):
        out = paged_attention(q, k, v, pages, valid, page=4, scale=0.3)
        want = paged_attention(q, k.contiguous(), v.contiguous(), pages, valid, page=4, scale=0.3)
        assert (out - want).abs().max() < 1e-12
        assert (out - _masked(q, k, v, pages, valid, 4, 0.3)).abs().max() < 1e-12


@pytest.mark.parametrize("Nk", [40, 43])  # the current page full, and partial
def test_decode_page_attention_reads_the_past_pages_and_the_current_one(Nk):
    from attnkit.kernels.gathered_keys import decode_page_attention

    g = torch.Generator().manual_seed(Nk)
    B, H, Hkv, D, page = 2, 4, 2, 8, 4
    q = torch.randn(B, H, 1, D, generator=g, dtype=torch.float64)
    buffer = torch.randn(B, Hkv, 64, D, generator=g, dtype=torch.float64)  # a cache's buffer, longer than the cache
    k, v = buffer[:, :, :Nk], buffer.flip(2)[:, :, :Nk]
    current = (Nk - 1) // page
    past = torch.rand(B, H, current, generator=g).argsort(-1)[..., :5]  # distinct, in no order
    out = decode_page_attention(q, k, v, past, page=page, scale=0.3)
    pages = torch.cat([torch.full((B, H, 1), current), past], -1)[:, :, None]
    want = _masked(q, k, v, pages, torch.ones_like(pages, dtype=torch.bool), page, 0.3)
    assert (out - want).abs().max() < 1e-12


def test_a_bfloat16_decode_step_takes_the_copying_form():
    """PyTorch's sampled product has no bfloat16 on the CPU: such a Quest step copies its keys, and equals the
    float32 step on the same (rounded) inputs."""
    import attnkit

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 40, 8, generator=g).bfloat16() for _ in range(3))
    with torch.no_grad():  # a decode call: the last query against the whole cache
        out, _ = attnkit.attention(q[:, :, -1:], k, v, "quest", causal=True, page=4, top_k=3, return_state=True)
        want, _ = attnkit.attention(q[:, :, -1:].float(), k.float(), v.float(), "quest", causal=True, page=4,
                                    top_k=3, return_state=True)
    assert out.dtype == torch.bfloat16 and (out.float() - want).abs().max() < 0.05


@pytest.mark.parametrize("H,Hkv,N,top_k", [(4, 1, 40, 1), (4, 2, 40, 3), (2, 2, 17, 5)])
def test_quest_decoded_from_the_first_token_equals_the_reference(H, Hkv, N, top_k, decode_form):
    """Every step of a decode from one token (caches shorter than the pages a step reads included) equals the
    float64 reference on the whole sequence, in either form of the step."""
    import attnkit
    from attnkit.families.quest import _reference

    g = torch.Generator().manual_seed(N + top_k)
    q = torch.randn(1, H, N, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, Hkv, N, 8, generator=g, dtype=torch.float64) for _ in range(2))
    outs, state = [], None
    with torch.no_grad():
        for t in range(N):
            out, state = attnkit.attention(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], "quest", causal=True,
                                           state=state, return_state=True, page=4, top_k=top_k)
            outs.append(out)
    want = _reference(q, k, v, causal=True, mask=None, scale=8 ** -0.5, page=4, top_k=top_k)
    assert (torch.cat(outs, 2) - want).abs().max() < 1e-12


def test_decode_page_attention_refuses_a_cache_shorter_than_its_pages():
    from attnkit.kernels.gathered_keys import decode_page_attention

    q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 8, 8)  # one complete page before the last token's
    with pytest.raises(ValueError, match="k holds 8 tokens: fewer complete pages before the last token than the 2"):
        decode_page_attention(q, k, k, torch.tensor([[[0, 1]] * 2]), page=4, scale=0.3)
    out = decode_page_attention(q, torch.cat([k, k[:, :, :1]], 2), torch.cat([k, k[:, :, :1]], 2),
                                torch.tensor([[[0, 1]] * 2]), page=4, scale=0.3)  # 9 tokens: pages 0, 1 complete
    assert out.shape == (1, 2, 1, 8) and out.isfinite().all()


def test_decode_key_attention_reads_the_chosen_keys_in_any_order():
    """Loki's decode step: one query per head over its chosen keys (unsorted, GQA, a buffer longer than the cache)
    equals masked softmax over them."""
    from attnkit.kernels.gathered_keys import decode_key_attention

    g = torch.Generator().manual_seed(5)
    B, H, Hkv, D, Nk = 2, 4, 2, 8, 37
    q = torch.randn(B, H, 1, D, generator=g, dtype=torch.float64)
    buffer = torch.randn(B, Hkv, 64, D, generator=g, dtype=torch.float64)
    k, v = buffer[:, :, :Nk], buffer.flip(2)[:, :, :Nk]
    chosen = torch.rand(B, H, Nk, generator=g).argsort(-1)[..., :9]  # distinct, in no order
    out = decode_key_attention(q, k, v, chosen, scale=0.3)
    want = _masked(q, k, v, chosen[:, :, None], torch.ones(B, H, 1, 9, dtype=torch.bool), 1, 0.3)
    assert (out - want).abs().max() < 1e-12
    strided = torch.stack([chosen, chosen], -1)[..., 0]  # the same positions in a non-contiguous view
    assert torch.equal(decode_key_attention(q, k, v, strided, scale=0.3), out)
    with pytest.raises(ValueError, match=r"chosen must be \(B, H, K\) = \(2, 4, K\)"):
        decode_key_attention(q, k, v, chosen[:, :, None], scale=0.3)


def test_decode_row_numbers_are_int32_only_while_every_row_fits():
    from attnkit.kernels.gathered_keys import _index_dtype

    rows = torch.zeros(1, 8)
    assert _index_dtype(rows.expand(2 ** 31 - 1, 8)) == torch.int32
    assert _index_dtype(rows.expand(5, 8), rows.expand(2 ** 31, 8)) == torch.int64
