"""MoA's search: the influence is the exact loss change for a loss linear in the weights, rule masks
are the ``moa`` mechanism's masks, the knapsack is exact, and a profiled model gets a plan the
``moa`` mechanism runs."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit.interpret.moa_search import (attention_influence, candidate_rules, profile, rule_densities, rule_losses,
                                          search)
from attnkit.models import DecoderLM, ModelConfig


def test_influence_is_the_loss_change_of_dropping_an_entry_when_the_loss_is_linear():
    g = torch.Generator().manual_seed(0)
    A = torch.softmax(torch.randn(5, 5, generator=g, dtype=torch.float64), -1)
    C = torch.randn(5, 5, generator=g, dtype=torch.float64)  # L = sum(C * A), so dL/dA = C
    influence = attention_influence(A, C)
    for i, j in [(0, 0), (2, 3), (4, 1)]:
        dropped = A.clone()
        dropped[i, j] = 0
        dropped[i] /= dropped[i].sum()
        torch.testing.assert_close(influence[i, j], (C * dropped).sum() - (C * A).sum())


def test_rule_masks_are_the_moa_mechanisms_masks():
    rules = [(4, 0.0), (2, 0.5), (16, 0.3)]
    n = 24
    q = k = v = torch.randn(1, 3, n, 8, dtype=torch.float64)
    alphas, betas = tuple(a for a, _ in rules), tuple(b for _, b in rules)
    with attnkit.capture() as rec:
        attnkit.attention(q, k, v, "moa", causal=True, alphas=alphas, betas=betas)
    weights = rec[0].weights
    kept = (weights[0] > 0).sum((-1, -2)).double() / (n * (n + 1) / 2)
    torch.testing.assert_close(rule_densities(n, rules), kept)


def test_the_knapsack_finds_the_best_feasible_plan():
    g = torch.Generator().manual_seed(1)
    n, rules = 16, [(2, 0.0), (4, 0.1), (8, 0.3), (16, 0.0)]
    influence = {"a": torch.rand(3, n, n, generator=g, dtype=torch.float64)}
    plan = search({n: influence}, 0.55, rules=rules, resolution=10_000)
    losses, dens = rule_losses(influence["a"], rules), rule_densities(n, rules)
    best = min((c for c in itertools.product(range(4), repeat=3) if dens[list(c)].mean() <= 0.55),
               key=lambda c: float(sum(losses[h, r] for h, r in enumerate(c))))
    assert plan.rules["a"] == [rules[r] for r in best]
    assert plan.density[n] <= 0.55


def test_a_head_whose_loss_lives_far_away_gets_the_wider_rule():
    n = 32
    far = torch.zeros(n, n, dtype=torch.float64)
    far[:, 0] = 1.0  # dropping the first key hurts
    near = torch.eye(n, dtype=torch.float64)
    plan = search({n: {"layer": torch.stack([near, far])}}, 0.6, rules=[(1, 0.0), (n, 0.0)])
    assert plan.rules["layer"] == [(1, 0.0), (n, 0.0)]


def test_a_profiled_model_gets_a_plan_the_moa_mechanism_runs():
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=16, dim=16, heads=2, schedule="FF"))
    batches = [torch.randint(0, 16, (2, 17)) for _ in range(2)]

    def loss(m, batch):
        return F.cross_entropy(m(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())

    influence = profile(model, batches, loss)
    assert len(influence) == 2 and all(t.shape == (2, 16, 16) for t in influence.values())
    assert all(p.grad is None for p in model.parameters())
    plan = search({16: influence}, 0.5, rules=candidate_rules([16], betas=(0.0, 0.25)))
    assert plan.density[16] <= 0.5
    config = ModelConfig(vocab_size=16, dim=16, heads=2, schedule="AB",
                         mixers={"A": {"mechanism": "moa", **plan.params(list(influence)[0])},
                                 "B": {"mechanism": "moa", **plan.params(list(influence)[1])}})
    sparse = DecoderLM(config)
    sparse.load_state_dict(model.state_dict())
    assert torch.isfinite(sparse(batches[0][:, :-1])).all()


def test_a_budget_below_every_rule_is_refused():
    with pytest.raises(ValueError, match="budget"):
        search({8: {"a": torch.zeros(1, 8, 8)}}, 0.01, rules=[(4, 0.0)])
    with pytest.raises(ValueError, match="budget"):
        search({8: {"a": torch.zeros(1, 8, 8)}}, 1.5)
