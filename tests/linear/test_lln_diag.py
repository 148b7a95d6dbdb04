"""LLN+Diag against the combination in the LLN paper's code: the average of LLN attention (exponential
maps, causal running sums) and softmax attention inside blocks of head_dim tokens."""
import math

import pytest
import torch

import attnkit
from attnkit.families.lln import DEFAULT_ALPHA, DEFAULT_BETA


def _lln_plus_diag(q, k, v, causal):
    N, D = q.shape[2], q.shape[3]
    Q, K = torch.exp(DEFAULT_ALPHA * q), torch.exp(DEFAULT_BETA * k)
    if causal:
        kv = torch.einsum("bhnd,bhnm->bhndm", K, v).cumsum(2)
        linear = torch.einsum("bhnd,bhndm->bhnm", Q, kv) / torch.einsum("bhnd,bhnd->bhn", Q, K.cumsum(2))[..., None]
    else:
        linear = Q @ (K.transpose(-1, -2) @ v) / (Q @ K.sum(2)[..., None])
    blocks = []
    for s in range(0, N, D):  # the code's blocks of D tokens, the remainder a block of its own
        e = min(N, s + D)
        scores = q[:, :, s:e] @ k[:, :, s:e].transpose(-1, -2) / math.sqrt(D)
        if causal:
            scores = scores.masked_fill(~torch.ones(e - s, e - s, dtype=torch.bool).tril(), float("-inf"))
        blocks.append(scores.softmax(-1) @ v[:, :, s:e])
    return 0.5 * (linear + torch.cat(blocks, dim=2))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("form", ["reference", "chunked", "recurrent"])
def test_lln_diag_is_the_papers_average(causal, form):
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, 29, 8, generator=g, dtype=torch.float64) for _ in range(3))
    out = attnkit.attention(q, k, v, "lln_diag", causal=causal, form=form, chunk_size=4)
    torch.testing.assert_close(out, _lln_plus_diag(q, k, v, causal), rtol=1e-12, atol=1e-12)


def test_lln_diag_refuses_cross_attention_and_bad_blocks():
    forms = attnkit.spec("lln_diag").stateful_forms
    q, k = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 7, 4)
    with pytest.raises(ValueError, match="self-attention"):
        forms["chunked"](q, k, k, causal=False, scale=0.5)
    with pytest.raises(ValueError, match="block"):
        forms["chunked"](q, q, q, causal=True, scale=0.5, block=0)
