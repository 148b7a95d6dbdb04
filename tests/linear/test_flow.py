"""Flow-Attention (Flowformer, causal) against the authors' causal equations, written as their code
computes them: einsums over running sums, the position ``n_i = i`` as normaliser, eps on both sides."""
import pytest
import torch

import attnkit


def _flowformer_causal(q, k, v, eps=1e-6):
    q, k = torch.sigmoid(q), torch.sigmoid(k)
    n = torch.arange(1, q.shape[2] + 1, dtype=q.dtype)[None, None, :]
    incoming = n / torch.einsum("bhld,bhld->bhl", q + eps, k.cumsum(2) + eps)
    outgoing = n / torch.einsum("bhld,bhld->bhl", k + eps, q.cumsum(2) + eps)
    conserved_sink = torch.einsum("bhld,bhld->bhl", q + eps, (k * outgoing[..., None]).cumsum(2) + eps) / n
    conserved_source = torch.einsum("bhld,bhld->bhl", k + eps, (q * incoming[..., None]).cumsum(2) + eps) / n
    exp_source = conserved_source.clamp(-1.0, 1.0).exp()
    competition = exp_source / exp_source.cumsum(-1) * n
    kv = torch.einsum("bhld,bhlm->bhldm", k, v * competition[..., None]).cumsum(2)
    out = torch.einsum("bhld,bhldm->bhlm", q * (incoming / n)[..., None], kv)
    return out * torch.sigmoid(conserved_sink)[..., None]


@pytest.mark.parametrize("form", ["reference", "chunked", "recurrent"])
def test_flow_is_flowformers_causal_attention(form):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 29, 8, generator=g, dtype=torch.float64) for _ in range(3))
    out = attnkit.attention(q, k, v, "flow", causal=True, scale=1.0, form=form, chunk_size=8)
    torch.testing.assert_close(out, _flowformer_causal(q, k, v), rtol=1e-12, atol=1e-12)


def test_flow_state_is_constant_and_bad_calls_are_refused():
    q = torch.randn(1, 2, 5, 4)
    forms = attnkit.spec("flow").stateful_forms
    _, state = forms["chunked"](q, q, q, causal=True, scale=1.0)
    assert state.numel() == 2 * (4 * 4 + 1 + 4 * 4) == attnkit.spec("flow").state_size(1, 2, 2, 5, 4)
    with pytest.raises(ValueError, match="causal"):
        forms["chunked"](q, q, q, causal=False, scale=1.0)
    with pytest.raises(ValueError, match="eps"):
        forms["parallel"](q, q, q, causal=True, scale=1.0, eps=-1.0)


def _flowformer_normal(q, k, v, eps=1e-6):
    q, k = torch.sigmoid(q), torch.sigmoid(k)
    incoming = 1.0 / torch.einsum("bhld,bhd->bhl", q + eps, k.sum(2) + eps)
    outgoing = 1.0 / torch.einsum("bhld,bhd->bhl", k + eps, q.sum(2) + eps)
    conserved_sink = torch.einsum("bhld,bhd->bhl", q + eps, (k * outgoing[..., None]).sum(2) + eps)
    conserved_source = torch.einsum("bhld,bhd->bhl", k + eps, (q * incoming[..., None]).sum(2) + eps)
    allocation = torch.sigmoid(conserved_sink * (q.shape[2] / k.shape[2]))
    competition = conserved_source.clamp(-1.0, 1.0).softmax(-1) * k.shape[2]
    kv = torch.einsum("bhld,bhlm->bhdm", k, v * competition[..., None])
    return torch.einsum("bhld,bhdm->bhlm", q * incoming[..., None], kv) * allocation[..., None]


@pytest.mark.parametrize("form", ["reference", "factorised"])
def test_flow_bidirectional_is_flowformers_normal_attention(form):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, 13, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 3, 21, 8, generator=g, dtype=torch.float64) for _ in range(2))
    out = attnkit.attention(q, k, v, "flow_bidirectional", causal=False, scale=1.0, form=form)
    torch.testing.assert_close(out, _flowformer_normal(q, k, v), rtol=1e-12, atol=1e-12)
