"""Multi-head latent attention: absorbed = naive, incremental = one-shot, the cache holds only the latent."""
from __future__ import annotations

import pytest
import torch

from attnkit.nn import MultiHeadLatentAttention

X = torch.randn(2, 11, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _mla(**kw):
    torch.manual_seed(0)
    return MultiHeadLatentAttention(32, 4, head_dim=8, kv_latent=12, rope_dim=4, **kw).double()


@pytest.mark.parametrize("q_latent", [None, 10])
@pytest.mark.parametrize("causal", [False, True])
def test_absorbed_form_equals_naive_form(q_latent, causal):
    mla = _mla(q_latent=q_latent)
    torch.testing.assert_close(mla(X, causal=causal, form="absorbed"), mla(X, causal=causal, form="naive"))


@pytest.mark.parametrize("form", ["absorbed", "naive"])
def test_incremental_decoding_equals_one_shot_and_caches_the_latent(form):
    mla = _mla(q_latent=10, mechanism="alibi", attention_form="chunked")
    whole = mla(X, causal=True, form=form)
    out, state = mla(X[:, :5], causal=True, return_state=True, form=form)
    outs = [out]
    for t in range(5, 11):
        out, state = mla(X[:, t : t + 1], causal=True, state=state, return_state=True, form=form)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), whole)
    assert state.length == 11 and state.numel() == 2 * 11 * (12 + 4)  # not 2 * heads * head_dim per token


def test_a_cache_is_a_value_continuing_twice_from_it_gives_the_same_answer():
    mla = _mla()
    whole = mla(X, causal=True)
    with torch.no_grad():
        _, state = mla(X[:, :5], causal=True, return_state=True)
        first = mla(X[:, 5:8], causal=True, state=state)
        again = mla(X[:, 5:8], causal=True, state=state)
    assert state.length == 5
    torch.testing.assert_close(first, whole[:, 5:8])
    torch.testing.assert_close(again, whole[:, 5:8])


def test_decoupled_rope_breaks_permutation_equivariance_and_gradients_flow():
    mla = _mla()
    x = X.clone().requires_grad_(True)
    mla(x, causal=True).sum().backward()
    assert all(p.grad is not None for p in mla.parameters())
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # without positions, non-causal attention would commute with permuting tokens
        assert (mla(X[:, perm]) - mla(X)[:, perm]).abs().max() > 1e-3
        mla.k_rope.weight.zero_()
        torch.testing.assert_close(mla(X[:, perm]), mla(X)[:, perm])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="rope_dim"):
        MultiHeadLatentAttention(32, 4, head_dim=8, kv_latent=12, rope_dim=3)
    with pytest.raises(ValueError, match="form='fast'"):
        MultiHeadLatentAttention(32, 4, head_dim=8, kv_latent=12, attention_form="fast")
    with pytest.raises(ValueError, match="kv_latent"):
        MultiHeadLatentAttention(32, 4, head_dim=8, kv_latent=0)
    mla = _mla()
    with pytest.raises(ValueError, match="form"):
        mla(X, form="fast")
    with pytest.raises(ValueError, match="causal=True"):
        mla(X, return_state=True)
    with pytest.raises(ValueError, match="x must have shape"):
        mla(X[..., :5])
