"""MHE attention: one shared projection per q/k/v and an embedding per head; 3nd parameters beyond one head."""
import pytest
import torch

from attnkit.nn import Attention, HeadEmbeddingAttention

from .layer_checks import assert_continues_in_pieces, parameter_count, softmax_head


def _qkv_parameters(layer) -> int:
    return parameter_count(layer.q_proj, layer.k_proj, layer.v_proj)


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
    heads = []
    for i in range(n):
        made = []
        for proj in (layer.q_proj, layer.k_proj, layer.v_proj):
            shared = x @ proj.weight.T
            made.append(shared + proj.embeddings[i] if mode == "add" else shared * proj.embeddings[i])
        heads.append(softmax_head(*made, causal))
    expected = layer.out_proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(layer(x, causal=causal), expected)


def test_gqa_rope_and_incremental_decoding_work_as_in_attention():
    torch.manual_seed(1)
    layer = HeadEmbeddingAttention(32, 4, kv_heads=2, rope=True, mechanism="alibi", dtype=torch.float64)
    assert_continues_in_pieces(layer, torch.randn(2, 9, 32, dtype=torch.float64), (4, 8), causal=True)
    assert layer.k_proj.embeddings.shape == (2, 8)


def test_a_mode_other_than_add_or_mul_is_refused():
    with pytest.raises(ValueError, match="mode"):
        HeadEmbeddingAttention(16, 2, mode="concat")
