"""Sink statistics, massive activations and ACT's attention calibration."""
from __future__ import annotations

import pytest
import torch

from attnkit.interpret.calibration import calibrate_weights, calibrated, search_heads
from attnkit.interpret.sinks import massive_activations, received_attention, sink_stats
from attnkit.models import DecoderLM, ModelConfig


def _sinky(N=6):
    """Causal weights (1, 2, N, N): head 0 sends half of every row to token 3 once it is visible."""
    w = torch.ones(N, N, dtype=torch.float64).tril()
    w[3:, 3] = w[3:].sum(-1) - 1  # token 3 gets as much as all the others together
    w = w / w.sum(-1, keepdim=True)
    flat = torch.ones(N, N, dtype=torch.float64).tril()
    return torch.stack([w, flat / flat.sum(-1, keepdim=True)])[None]


def test_received_attention_counts_the_queries_that_see_each_key():
    w = _sinky()
    r = received_attention(w, causal=True)
    assert torch.allclose(r[0, 1, -1], torch.tensor(1 / 6, dtype=torch.float64))  # only query 5 sees key 5
    assert torch.allclose(r[0, 0, 3], w[0, 0, 3:, 3].mean())


def test_sink_stats_find_the_hidden_sink_and_measure_entropy():
    stats = sink_stats([_sinky()], causal=True, threshold=0.3)
    head0, head1 = stats
    assert 3 in head0.sinks and 3 not in head1.sinks and head0.entropy < head1.entropy
    assert head1.first_mass == pytest.approx(sum(1 / (i + 1) for i in range(6)) / 6)


def test_calibration_moves_the_hidden_sinks_mass_to_the_other_keys():
    w = _sinky()
    out = calibrate_weights(w, [0], causal=True, beta=0.4, threshold=0.3)
    assert (out.sum(-1) - 1).abs().max() < 1e-12
    assert torch.allclose(out[0, 0, 3:, 3], 0.4 * w[0, 0, 3:, 3])
    others = [0, 1, 2, 4, 5]
    row = out[0, 0, 5, others] / out[0, 0, 5, others].sum()
    assert torch.allclose(row, w[0, 0, 5, others] / w[0, 0, 5, others].sum())  # proportions kept
    assert torch.equal(out[0, 1], w[0, 1]) and torch.equal(out[0, 0, :3], w[0, 0, :3])
    assert torch.equal(calibrate_weights(w, [0], causal=True, beta=1.0, threshold=0.3), w)


def test_calibrated_model_and_head_search():
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=16, dim=16, heads=2, schedule="FF")).eval()
    tokens = torch.randint(0, 16, (2, 12))
    with torch.no_grad():
        base = model(tokens)
        with calibrated(model, {"blocks.1.mixer": [0, 1]}, causal=True, threshold=0.0) as rec:
            changed = model(tokens)
        with calibrated(model, {"blocks.1.mixer": [0, 1]}, causal=True, beta=1.0):
            same = model(tokens)
    assert (same - base).abs().max() < 1e-5 and (changed - base).abs().max() > 1e-4
    assert len(rec) == 2
    with pytest.raises(ValueError, match="does not have"):
        with calibrated(model, {"blocks.9.mixer": [0]}, causal=True):
            pass

    def loss():
        return torch.nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()).item()

    chosen, trials = search_heads(model, loss, lambda x: -x, causal=True, threshold=0.0)
    assert len(trials) == 4 and all(t["kept"] == (t["score"] > t["base"]) for t in trials)
    assert sum(len(h) for h in chosen.values()) == sum(t["kept"] for t in trials)


def test_massive_activations_find_a_spike():
    h = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(0))
    h[0, 0, 3] = 500.0
    found = massive_activations([h], ratio=50)
    assert [(f.token, f.dim) for f in found] == [(0, 3)]


def test_min_queries_ignores_the_last_keys_of_a_causal_window():
    w = _sinky()
    assert received_attention(w, causal=True, min_queries=3)[0, 1, -2:].abs().max() == 0
    assert received_attention(w, causal=False, min_queries=100).abs().min() > 0
