"""Relational attention: sum_j alpha_ij (r(x_i, x_j) W_r + s_j W_s), pair by pair."""
import pytest
import torch

from attnkit.nn import RelationalAttention


def _paper(layer, x, causal):
    B, N, C = x.shape
    H, D, R, E = layer.heads, layer.head_dim, layer.relations, layer.rel_dim
    q, k = layer.q_attn(x).view(B, N, H, D), layer.k_attn(x).view(B, N, H, D)
    qr, kr = layer.q_rel(x).view(B, N, R, E), layer.k_rel(x).view(B, N, R, E)
    sym = layer.w_s(layer.symbols[:N]).view(N, H, D)
    out = torch.zeros(B, N, H, D, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                keys = range(i + 1) if causal else range(N)
                scores = torch.stack([q[b, i, h] @ k[b, j, h] / D ** 0.5 for j in keys])
                alpha = torch.softmax(scores, 0)
                for a, j in zip(alpha, keys):
                    r = torch.stack([qr[b, i, l] @ kr[b, j, l] for l in range(R)])  # r(x_i, x_j), d_r relations
                    out[b, i, h] += a * (r @ layer.w_r[h] + sym[j, h])
    return layer.out(out.reshape(B, N, C))


@pytest.mark.parametrize("causal", [False, True])
def test_matches_the_papers_equation_pair_by_pair(causal):
    torch.manual_seed(0)
    layer = RelationalAttention(8, 2, 3, max_len=10, rel_dim=2).double()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    torch.testing.assert_close(layer(x, causal=causal), _paper(layer, x, causal))


def test_what_is_sent_is_the_relation_and_the_symbol_not_the_senders_features():
    """With relations switched off the output depends on x only through the weights alpha."""
    torch.manual_seed(1)
    layer = RelationalAttention(8, 2, 3, max_len=10).double()
    with torch.no_grad():
        layer.w_r.zero_()
        layer.q_attn.weight.zero_()  # uniform weights: every query averages the symbols
    a, b = (layer(torch.randn(1, 5, 8, dtype=torch.float64)) for _ in range(2))
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="max_len=10"):
        layer(torch.randn(1, 11, 8, dtype=torch.float64))
