"""MoH (mixture-of-head routing with shared heads) and MoA (per-token head selection)."""
from __future__ import annotations

import pytest
import torch

from attnkit import attention
from attnkit.nn import Attention, MixtureOfAttentionHeads, MixtureOfHeads

X = torch.randn(2, 9, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _moh(**kw):
    torch.manual_seed(0)
    return MixtureOfHeads(32, 8, **{"shared_heads": 2, "active_heads": 3, **kw}).double()


def test_moh_gates_follow_the_paper():
    moh = _moh()
    g = moh.gates(X)
    assert ((g[..., 2:] > 0).sum(-1) == 3).all() and (g[..., :2] > 0).all()
    a = moh.type_router(X).softmax(-1)
    torch.testing.assert_close(g[..., :2], a[..., :1] * moh.shared_router(X).softmax(-1))
    routed = moh.routed_router(X).softmax(-1)
    on = g[..., 2:] > 0
    torch.testing.assert_close(g[..., 2:][on], (a[..., 1:] * routed)[on])
    assert torch.equal(on, routed >= routed.topk(3, -1).values[..., -1:])


def test_moh_is_a_weighted_sum_of_heads():
    moh = _moh(kv_heads=4, rope=True)
    mha = Attention(32, 8, kv_heads=4, rope=True).double()
    mha.load_state_dict(moh.state_dict(), strict=False)
    g = moh.gates(X)
    want = 0
    for h in range(8):  # head h alone through the output projection, weighted by its gate per token
        mha.head_mask = torch.eye(8, dtype=torch.float64)[h]
        want = want + g[..., h : h + 1] * mha.merge_heads(_heads(mha, X), X)
    torch.testing.assert_close(moh(X, causal=True), want)


def _heads(layer, x):
    q = layer.split_heads(layer.q_proj(x), layer.heads)
    k, v = layer.project_kv(x)
    return attention(q, k, v, causal=True, position=layer.rope)


def test_moh_uniform_shared_heads_is_mha_over_heads_and_decodes_incrementally():
    moh = _moh(shared_heads=8, active_heads=0)
    torch.nn.init.zeros_(moh.shared_router.weight)
    mha = Attention(32, 8).double()
    mha.load_state_dict(moh.state_dict(), strict=False)
    torch.testing.assert_close(moh(X), mha(X) / 8)
    moh = _moh().train()
    out, state = moh(X[:, :4], causal=True, return_state=True)
    out2, _ = moh(X[:, 4:], causal=True, state=state, return_state=True)
    torch.testing.assert_close(torch.cat([out, out2], 1), moh(X, causal=True))
    assert moh.aux_loss is not None and moh.aux_loss > 0


@pytest.mark.parametrize("causal", [False, True])
def test_moa_sparse_form_equals_dense_definition(causal):
    torch.manual_seed(0)
    moa = MixtureOfAttentionHeads(32, experts=6, top_k=2, head_dim=8).double()
    torch.testing.assert_close(moa(X, causal=causal), moa(X, causal=causal, form="dense"))
    mem = torch.randn(2, 5, 32, dtype=torch.float64)
    torch.testing.assert_close(moa(X, mem), moa(X, mem, form="dense"))


def test_moa_written_out_and_incremental():
    torch.manual_seed(0)
    moa = MixtureOfAttentionHeads(32, experts=4, top_k=2, head_dim=8).double()
    probs = moa.router(X).softmax(-1)
    k, v = moa.k_proj(X), moa.v_proj(X)
    want = torch.zeros_like(X)
    for e in range(4):  # y_t = sum over chosen experts of p * W_o^e softmax(q^e k^T / sqrt(d)) v
        q = X @ moa.q_experts[e].T
        s = (q @ k.transpose(1, 2) / 8 ** 0.5).masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), float("-inf"))
        chosen = (probs[..., e : e + 1] >= probs.topk(2, -1).values[..., -1:]).double()
        want = want + chosen * probs[..., e : e + 1] * ((s.softmax(-1) @ v) @ moa.o_experts[e].T)
    torch.testing.assert_close(moa(X, causal=True), want)
    out, state = moa(X[:, :3], causal=True, return_state=True)
    out2, state = moa(X[:, 3:], causal=True, state=state, return_state=True)
    torch.testing.assert_close(torch.cat([out, out2], 1), want)
    assert state.k.shape[1] == 1  # one shared K/V head in the cache
    moa.train()(X).sum().backward()
    assert moa.aux_loss > 0 and moa.q_experts.grad is not None and moa.router.weight.grad is not None


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="active_heads"):
        MixtureOfHeads(32, 8, shared_heads=2, active_heads=7)
    with pytest.raises(ValueError, match="shared_heads"):
        MixtureOfHeads(32, 8, shared_heads=9, active_heads=1)
    with pytest.raises(ValueError, match="top_k"):
        MixtureOfAttentionHeads(32, experts=2, top_k=3, head_dim=8)
    with pytest.raises(ValueError, match="form"):
        MixtureOfAttentionHeads(32, experts=2, top_k=1, head_dim=8)(X.float(), form="x")
