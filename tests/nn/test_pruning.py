"""Head importance (|dL/dxi_h|) and pruning, after "Are Sixteen Heads Really Better than One?"."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from attnkit.nn import Attention
from attnkit.nn.pruning import head_importance, mask_heads, prune_heads, pruning_order

X = torch.randn(3, 6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
Y = torch.randn(3, 6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = Attention(16, 4, bias=True).double()
        self.b = Attention(16, 4, kv_heads=2).double()

    def forward(self, x):
        return self.b(x + self.a(x, causal=True), causal=True)


def _loss(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def test_importance_is_the_mean_absolute_mask_gradient():
    model = Tiny()
    batches = [(X[i : i + 1], Y[i : i + 1]) for i in range(3)]
    scores = head_importance(model, batches, _loss, normalise=False)
    eps = 1e-6
    for name, layer in (("a", model.a), ("b", model.b)):
        for h in range(4):
            total = 0.0
            for batch in batches:  # central finite difference of the loss in xi_h
                diffs = []
                for sign in (1, -1):
                    layer.head_mask = torch.ones(4, dtype=torch.float64)
                    layer.head_mask[h] += sign * eps
                    diffs.append(_loss(model, batch).item())
                    layer.head_mask = None
                total += abs(diffs[0] - diffs[1]) / (2 * eps)
            assert scores[name][h].item() == pytest.approx(total / 3, rel=1e-5)
    normed = head_importance(model, batches, _loss)
    assert all(torch.isclose(s.norm(), torch.tensor(1.0)) for s in normed.values())
    assert model.a.head_mask is None and all(p.grad is None for p in model.parameters())


def test_pruning_removes_least_important_heads_and_equals_masking():
    model = Tiny()
    scores = head_importance(model, [(X, Y)], _loss)
    order = pruning_order(scores)
    assert len(order) == 8 and scores[order[0][0]][order[0][1]] <= scores[order[-1][0]][order[-1][1]]
    mask_heads(model, [("a", 1), ("a", 3)])
    masked = model(X)
    prune_heads(model.a, [1, 3])
    assert model.a.heads == 2 and model.a.q_proj.out_features == 8 and model.a.out_proj.in_features == 8
    torch.testing.assert_close(model(X), masked)
    assert head_importance(model, [(X, Y)], _loss)["a"].shape == (2,)


def test_bad_arguments_are_refused():
    model = Tiny()
    with pytest.raises(ValueError, match="kv_heads"):
        prune_heads(model.b, [0])
    with pytest.raises(ValueError, match="every head"):
        prune_heads(model.a, range(4))
    with pytest.raises(ValueError, match="no Attention layer"):
        mask_heads(model, [("c", 0)])
    with pytest.raises(ValueError, match="out of range"):
        mask_heads(model, [("a", 4)])
    with pytest.raises(ValueError, match="empty"):
        head_importance(model, [], _loss)
    with pytest.raises(ValueError, match="no attnkit.nn.Attention"):
        head_importance(nn.Linear(2, 2), [(X, Y)], _loss)
