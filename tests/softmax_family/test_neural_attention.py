"""Neural Attention: scores from an MLP of each (query, key) pair, the authors' network with its
down-projections folded into the first layer."""
import torch
from torch import nn

import attnkit

from ..nn.layer_checks import assert_continues_in_pieces


def test_equals_the_authors_network_with_the_down_projections_folded():
    torch.manual_seed(0)
    B, H, N, D, p = 2, 2, 7, 8, 4
    q, k, v = (torch.randn(B, H, N, D, dtype=torch.float64) for _ in range(3))
    down_q, down_k = nn.Linear(D, p).double(), nn.Linear(D, p).double()
    mlp = [nn.Linear(2 * p, p).double(), nn.Linear(p, p // 2).double(), nn.Linear(p // 2, 1).double()]
    qc = down_q(q)[:, :, :, None, :].expand(-1, -1, -1, N, -1)
    kc = down_k(k)[:, :, None, :, :].expand(-1, -1, N, -1, -1)
    scores = mlp[2](torch.relu(mlp[1](torch.relu(mlp[0](torch.cat([qc, kc], -1)))))).squeeze(-1)
    scores = scores.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), float("-inf"))
    expected = torch.softmax(scores, -1) @ v
    w1q, w1k = mlp[0].weight[:, :p], mlp[0].weight[:, p:]  # W_1 [q'; k'] = w1q q' + w1k k'
    folded = {
        "w_q": (w1q @ down_q.weight).T.expand(H, D, p), "w_k": (w1k @ down_k.weight).T.expand(H, D, p),
        "b_1": (mlp[0].bias + w1q @ down_q.bias + w1k @ down_k.bias).expand(H, p),
        "w_2": mlp[1].weight.T.expand(H, p, p // 2), "b_2": mlp[1].bias.expand(H, p // 2),
        "w_3": mlp[2].weight[0].expand(H, p // 2),
    }
    folded = {n: t.detach().contiguous() for n, t in folded.items()}
    for form in ("reference", "chunked"):
        out = attnkit.attention(q, k, v, "neural_attention", causal=True, form=form, q_chunk=3, kv_chunk=4, **folded)
        torch.testing.assert_close(out, expected.detach())


def test_the_layer_learns_the_score_network_and_decodes_incrementally():
    torch.manual_seed(1)
    layer = attnkit.nn.Attention(32, heads=2, mechanism="neural_attention").double()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    assert_continues_in_pieces(layer, x, (4, 8), causal=True)
    layer(x, causal=True).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.inputs.parameters())
