"""The PaTH layer: the short convolution on w, and decoding in pieces with it carried in the state."""
import torch
import torch.nn.functional as F

import attnkit
from attnkit.nn import PaTHAttention

from .layer_checks import assert_continues_in_pieces, perturbed


def _layer(seed=0, **kw):
    torch.manual_seed(seed)
    return perturbed(PaTHAttention(8, 2, rank=4, chunk_size=4, **kw).double())


def test_w_is_the_normalised_silu_of_a_causal_convolution_over_three_tokens():
    layer = _layer()
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    u = layer.direction(x)  # (B, N, dim)
    kernel, bias = layer.conv.weight[:, 0], layer.conv.bias  # (dim, 3)
    padded = torch.cat([u.new_zeros(2, 2, 8), u], 1)
    conv = torch.stack([(padded[:, t:t + 3] * kernel.T).sum(1) + bias for t in range(9)], 1)
    w = F.normalize(F.silu(conv).view(2, 9, 2, 4).transpose(1, 2), dim=-1)
    heads = lambda t: t.view(2, 9, 2, 4).transpose(1, 2)
    o = attnkit.attention(heads(layer.q(x)), heads(layer.k(x)), heads(layer.v(x)), "path", causal=True,
                          form="reference", w=w, beta=2 * torch.sigmoid(layer.strength(x)).transpose(1, 2))
    torch.testing.assert_close(layer(x), layer.out(o.transpose(1, 2).flatten(2)))


def test_decoding_in_pieces_equals_one_shot_with_the_convolution_carried():
    for kw in ({}, {"forget_gate": True}, {"w_conv": 0}):
        layer = _layer(seed=1, **kw)
        _, _, s3 = assert_continues_in_pieces(layer, torch.randn(2, 10, 8, dtype=torch.float64), (3, 4))
        assert s3.length == 10
