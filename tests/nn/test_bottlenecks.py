"""Slot Attention, PMA, Perceiver latents and IP-Adapter decoupled cross-attention."""
from __future__ import annotations

import pytest
import torch

from attnkit.nn import (Attention, DecoupledCrossAttention, PerceiverEncoder, PoolingByMultiheadAttention,
                        SlotAttention)

G = torch.Generator().manual_seed(0)
X = torch.randn(2, 10, 16, dtype=torch.float64, generator=G)
PERM = torch.randperm(10, generator=G)


def test_slot_attention_invariant_to_inputs_equivariant_to_slots():
    torch.manual_seed(0)
    sa = SlotAttention(4, 16, input_dim=16, iters=3, hidden_dim=32).double()
    init = sa.initial_slots(2, torch.Generator().manual_seed(1))
    slots, attn = sa(X, init, return_attention=True)
    assert slots.shape == (2, 4, 16) and attn.shape == (2, 10, 4)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 10, dtype=torch.float64) + 4 * sa.eps)  # softmax over slots
    torch.testing.assert_close(sa(X[:, PERM], init), slots)
    sperm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(sa(X, init[:, sperm]), slots[:, sperm])


def test_slot_attention_one_iteration_written_out_and_padding():
    torch.manual_seed(0)
    sa = SlotAttention(3, 16, iters=1, hidden_dim=32).double()
    init = sa.initial_slots(2, torch.Generator().manual_seed(2))
    x = sa.norm_inputs(X)
    k, v, q = sa.to_k(x), sa.to_v(x), sa.to_q(sa.norm_slots(init))
    a = (k @ q.transpose(1, 2) / 4).softmax(-1) + sa.eps  # softmax over slots, sqrt(16) = 4
    upd = (a / a.sum(1, keepdim=True)).transpose(1, 2) @ v
    s = sa.gru(upd.reshape(-1, 16), init.reshape(-1, 16)).view(2, 3, 16)
    torch.testing.assert_close(sa(X, init), s + sa.mlp(sa.norm_mlp(s)))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[:, 6:] = False
    torch.testing.assert_close(sa(X, init, mask=mask), sa(X[:, :6], init))
    sa(X).sum().backward()
    assert sa.slots_mu.grad is not None and sa.gru.weight_ih.grad is not None


def test_pma_pools_sets_order_free_and_ignores_padding():
    torch.manual_seed(0)
    pma = PoolingByMultiheadAttention(16, 4, seeds=2).double()
    out = pma(X)
    assert out.shape == (2, 2, 16)
    torch.testing.assert_close(pma(X[:, PERM]), out)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[:, 7:] = False
    torch.testing.assert_close(pma(X, mask=mask), pma(X[:, :7]))


def test_perceiver_latents_are_order_free_and_sized_by_latents():
    torch.manual_seed(0)
    enc = PerceiverEncoder(16, 24, 5, cross_heads=1, latent_heads=4, latent_layers=2, iterations=2).double()
    out = enc(X)
    assert out.shape == (2, 5, 24)
    torch.testing.assert_close(enc(X[:, PERM]), out)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[:, 8:] = False
    torch.testing.assert_close(enc(X, mask=mask), enc(X[:, :8]))
    out.sum().backward()
    assert enc.latents.grad is not None


def test_decoupled_cross_attention_adds_a_weighted_image_attention():
    torch.manual_seed(0)
    text_attn = Attention(16, 4, context_dim=12).double()
    ip = DecoupledCrossAttention(text_attn, image_dim=12, scale=0.5)
    text = torch.randn(2, 7, 12, dtype=torch.float64)
    image = torch.randn(2, 4, 12, dtype=torch.float64)
    torch.testing.assert_close(ip(X, text, image, scale=0.0), text_attn(X, text))
    # image projections start as copies of the text ones: same features give (1 + scale) x the text attention
    torch.testing.assert_close(ip(X, text, text), 1.5 * text_attn(X, text))
    ip(X, text, image).sum().backward()
    assert all(p.grad is not None for p in ip.adapter_parameters())


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="slots must have shape"):
        SlotAttention(3, 16)(X.float(), torch.zeros(2, 2, 16))
    with pytest.raises(ValueError, match="mask"):
        PoolingByMultiheadAttention(16, 4)(X.float(), mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="inputs must have shape"):
        PerceiverEncoder(8, 16, 4)(X.float())
    with pytest.raises(TypeError, match="text_attention"):
        DecoupledCrossAttention(torch.nn.Linear(2, 2), 4)
    with pytest.raises(ValueError, match="num_slots"):
        SlotAttention(0, 16)
