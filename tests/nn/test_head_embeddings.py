"""MHE attention: one shared projection per q/k/v and an embedding per head; 3nd parameters beyond one head."""
import pytest
import torch

import attnkit
from attnkit.nn import Attention, HeadEmbeddingAttention


def _qkv_parameters(layer) -> int:
    return sum(p.numel() for m in (layer.q_proj, layer.k_proj, layer.v_proj) for p in m.parameters())


@pytest.mark.parametrize("n, d", [(4, 8), (8, 16), (12, 64)])
def test_parameter_counts_are_the_papers(n, d):
    dim = n * d
    mhe = HeadEmbeddingAttention(dim, n, device="meta")
    single = Attention(dim, 1, head_dim=d, device="meta")  # single-head attention of the heads' size
    mha = Attention(dim, n, device="meta")
    assert _qkv_parameters(mhe) - _qkv_parameters(single) == 3 * n * d
    assert _qkv_parameters(mha) - _qkv_parameters(mhe) == (3 * n ** 2 - 3 * n) * d ** 2 - 3 * n * d


@pytest.mark.parametrize("mode", ["add", "mul"])
@pytest.mark.parametrize("causal", [True, False])
def test_matches_the_equations_head_by_head(mode, causal):
    torch.manual_seed(0)
    dim, n, N = 12, 3, 7
    layer = HeadEmbeddingAttention(dim, n, mode=mode, dtype=torch.float64)
    x = torch.randn(2, N, dim, dtype=torch.float64)
    d = dim // n
    heads = []
    for i in range(n):
        made = []
        for proj in (layer.q_proj, layer.k_proj, layer.v_proj):
            shared = x @ proj.weight.T
            made.append(shared + proj.embeddings[i] if mode == "add" else shared * proj.embeddings[i])
        q, k, v = made
        s = q @ k.transpose(-1, -2) / d ** 0.5
        if causal:
            s = s.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), float("-inf"))
        heads.append(torch.softmax(s, -1) @ v)
    expected = layer.out_proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(layer(x, causal=causal), expected)


def test_gqa_rope_and_incremental_decoding_work_as_in_attention():
    torch.manual_seed(1)
    layer = HeadEmbeddingAttention(32, 4, kv_heads=2, rope=True, mechanism="alibi", dtype=torch.float64)
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    whole = layer(x, causal=True)
    state, parts = None, []
    for t in range(0, 9, 4):
        out, state = layer(x[:, t:t + 4], causal=True, state=state, return_state=True)
        parts.append(out)
    torch.testing.assert_close(torch.cat(parts, dim=1), whole)
    assert layer.k_proj.embeddings.shape == (2, 8)


def test_a_mode_other_than_add_or_mul_is_refused():
    with pytest.raises(ValueError, match="mode"):
        HeadEmbeddingAttention(16, 2, mode="concat")
