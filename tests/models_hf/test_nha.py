"""Native Hybrid Attention against closed forms: what the window and the slots each contribute."""
import pytest
import torch

import attnkit


@pytest.mark.parametrize("window", [1, 4, 50])
@pytest.mark.parametrize("form", ["reference", "chunked"])
def test_window_is_the_w_most_recent_tokens_when_slots_record_nothing(window, form):
    # gate logits of +60: forget gate 1 - 1e-27, so the slots stay empty (score 0, value 0)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 11, 8, generator=g, dtype=torch.float64) for _ in range(3))
    M = 3
    gate = torch.full((1, 2, 11, M), 60.0, dtype=torch.float64)
    out = attnkit.attention(q, k, v, "nha", causal=True, form=form, slot_gate=gate, window=window, chunk=4)
    scores = (q @ k.transpose(-1, -2)) / 8 ** 0.5
    i, j = torch.arange(11)[:, None], torch.arange(11)[None, :]
    weights = scores.exp() * ((j <= i) & (j > i - window))
    expected = (weights @ v) / (weights.sum(-1, keepdim=True) + M)  # + M empty slots, each exp(0)
    assert torch.allclose(out, expected, atol=1e-12)


def test_window_zero_is_the_slot_recurrence_alone():
    # one slot, forget gate alpha: K~_t and V~_t are exponential moving averages; with one slot
    # and no window the softmax has a single entry, so o_t = V~_t exactly
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1, 9, 4, generator=g, dtype=torch.float64) for _ in range(3))
    logit = torch.randn(1, 1, 9, 1, generator=g, dtype=torch.float64)
    out = attnkit.attention(q, k, v, "nha", causal=True, slot_gate=logit, window=0, chunk=4, gate_normalizer=1.0)
    alpha = torch.sigmoid(logit)[0, 0, :, 0]
    memory, expected = torch.zeros(4, dtype=torch.float64), []
    for t in range(9):
        memory = alpha[t] * memory + (1 - alpha[t]) * v[0, 0, t]
        expected.append(memory)
    assert torch.allclose(out[0, 0], torch.stack(expected), atol=1e-12)
