"""Optimised, Efficient and Super Attention: slices of the input in place of the value (and key) projections."""
import pytest
import torch

from attnkit.nn import Attention, PayBetterAttention

from .layer_checks import assert_continues_in_pieces, parameter_count, softmax_head


@pytest.mark.parametrize("dim, heads", [(32, 4), (64, 8), (96, 3)])
def test_parameter_counts_are_three_quarters_and_a_half_of_standard_attention(dim, heads):
    standard = parameter_count(Attention(dim, heads, device="meta"))
    assert 4 * parameter_count(PayBetterAttention(dim, heads, variant="optimised", device="meta")) == 3 * standard
    assert 2 * parameter_count(PayBetterAttention(dim, heads, variant="efficient", device="meta")) == standard
    L = 10
    super_attention = PayBetterAttention(dim, heads, variant="super", seq_len=L, device="meta")
    assert parameter_count(super_attention) == standard // 2 + L * L


def _written_out(layer, x, causal):
    """The paper's heads: queries projected, keys projected (Optimised) or sliced, values sliced (after W_A for Super)."""
    N = x.shape[1]
    n, h = layer.heads, layer.head_dim
    q = x @ layer.q_proj.weight.T
    k = x @ layer.k_proj.weight.T if layer.variant == "optimised" else x
    v = x
    if layer.variant == "super":
        mix = layer.alignment[:N, :N]
        v = (mix.tril() if causal else mix) @ x
    heads = []
    for i in range(n):
        cols = slice(i * h, (i + 1) * h)
        heads.append(softmax_head(q[..., cols], k[..., cols], v[..., cols], causal))
    return layer.out_proj(torch.cat(heads, dim=-1))


@pytest.mark.parametrize("variant", ["optimised", "efficient", "super"])
@pytest.mark.parametrize("causal", [True, False])
def test_matches_the_equations_head_by_head(variant, causal):
    torch.manual_seed(0)
    extra = {"seq_len": 8, "causal": causal} if variant == "super" else {}
    layer = PayBetterAttention(12, 3, variant=variant, dtype=torch.float64, **extra)
    if layer.alignment is not None:
        with torch.no_grad():
            layer.alignment.add_(0.3 * torch.randn(8, 8, dtype=torch.float64))
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x, causal=causal), _written_out(layer, x, causal))


@pytest.mark.parametrize("variant", ["optimised", "efficient"])
def test_optimised_and_efficient_decode_incrementally(variant):
    torch.manual_seed(1)
    layer = PayBetterAttention(16, 4, variant=variant, dtype=torch.float64)
    assert_continues_in_pieces(layer, torch.randn(1, 7, 16, dtype=torch.float64), (3, 6), causal=True)


def test_super_attention_refuses_what_its_alignment_matrix_cannot_do():
    layer = PayBetterAttention(16, 4, variant="super", seq_len=6, causal=True)
    x = torch.randn(1, 5, 16)
    with pytest.raises(ValueError, match="one-shot"):
        layer(x, causal=True, return_state=True)
    with pytest.raises(ValueError, match="seq_len=6"):
        layer(torch.randn(1, 7, 16), causal=True)
    with pytest.raises(ValueError, match="causal=True"):
        layer(x, causal=False)
    with pytest.raises(ValueError, match="seq_len"):
        PayBetterAttention(16, 4, variant="optimised", seq_len=6)
    with pytest.raises(ValueError, match="slices"):
        PayBetterAttention(16, 4, head_dim=8)
    with pytest.raises(ValueError, match="variant"):
        PayBetterAttention(16, 4, variant="fast")
