"""Rollout, attention flow and gradient-weighted relevancy on cases with a known answer."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.interpret import attention_flow, relevancy, rollout, self_relevancy

from .tasks import marked_batch, trained


def test_rollout_rows_sum_to_one_and_chain_the_layers():
    g = torch.Generator().manual_seed(0)
    layers = [torch.rand(2, 3, 5, 5, generator=g, dtype=torch.float64).softmax(-1) for _ in range(3)]
    r = rollout(layers)
    assert r.shape == (2, 5, 5) and (r.sum(-1) - 1).abs().max() < 1e-12
    eye = torch.eye(5, dtype=torch.float64)
    hat = [0.5 * w.mean(1) + 0.5 * eye for w in layers]
    assert (r - hat[2] @ hat[1] @ hat[0]).abs().max() < 1e-12
    with pytest.raises(ValueError, match="negative"):
        rollout([layers[0] - 0.5])


def test_flow_is_bounded_by_the_narrowest_edge_where_rollout_multiplies():
    # out 0 reads layer-1 tokens 0 and 1 half each; token 0 reads inputs 0 and 1 half each, token 1 reads input 1.
    first = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]], dtype=torch.float64)
    second = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]], dtype=torch.float64)
    r = rollout([first, second], residual=False)
    f = attention_flow([first, second], residual=False)
    assert torch.allclose(r[0, 0], torch.tensor([0.25, 0.75], dtype=torch.float64))
    # max-flow to input 0: min(0.5, 0.5) = 0.5; to input 1: 0.5 + 0.5 = 1; normalised: 1/3, 2/3
    assert torch.allclose(f[0, 0], torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))
    assert torch.allclose(attention_flow([first], residual=False), first)  # one layer: the flow is the edge


def _explained(model, tokens, marked, answer):
    with attnkit.capture(model, grad=True) as rec:
        logits = model(tokens, marked)
    logits.gather(1, answer[:, None]).sum().backward()
    return rec


def test_relevancy_of_self_attention_points_at_the_copied_token():
    model = trained(cross=False)
    tokens, marked, answer = marked_batch(32, torch.Generator().manual_seed(1))
    rec = _explained(model, tokens, marked, answer)
    weights = rec.weights()
    r = self_relevancy(weights, [w.grad for w in weights])
    found = r[:, 0, 1:].argmax(-1)  # the readout token's row, over the sequence (position 0 is the readout)
    assert (found == marked).float().mean() >= 0.9
    roll = rollout([w.detach() for w in weights])[:, 0, 1:].argmax(-1)
    assert (roll == marked).float().mean() >= 0.9


def test_relevancy_of_cross_attention_points_at_the_retrieved_token():
    model = trained(cross=True)
    tokens, marked, answer = marked_batch(32, torch.Generator().manual_seed(2))
    rec = _explained(model, tokens, marked, answer)
    steps = [("context", r.weights, r.weights.grad) if r.module.startswith("layers") else
             ("cross", r.weights, r.weights.grad) for r in rec]
    assert [s[0] for s in steps] == ["context", "cross"]
    r_ss, r_sq = relevancy(steps)
    assert r_ss.shape == (32, 1, 1) and r_sq.shape == (32, 1, 7)
    assert (r_sq[:, 0].argmax(-1) == marked).float().mean() >= 0.9


def test_relevancy_refuses_maps_without_gradients():
    w = torch.rand(1, 2, 3, 3).softmax(-1)
    with pytest.raises(ValueError, match="grad=True"):
        self_relevancy([w], [None])
