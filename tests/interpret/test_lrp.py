"""AttnLRP: relevance is conserved (within 1e-3, float64, a small model) and finds the copied token."""
from __future__ import annotations

import pytest
import torch

from attnkit.interpret.lrp import attn_lrp
from attnkit.models import DecoderLM, ModelConfig

from .tasks import marked_batch, trained


def _model(biases: bool):
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=16, dim=16, heads=2, kv_heads=1, schedule="FF")).double().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.bias is not None:
            torch.nn.init.normal_(m.bias) if biases else torch.nn.init.zeros_(m.bias)
    return model


@pytest.mark.parametrize("softmax_relevance", [True, False])
def test_relevance_is_conserved_in_a_model_without_biases(softmax_relevance):
    model = _model(biases=False)
    tokens = torch.randint(0, 16, (1, 9), generator=torch.Generator().manual_seed(0))
    r = attn_lrp(model, lambda: model(tokens)[0, -1, 3], embedding=model.embed, softmax_relevance=softmax_relevance)
    assert r.tokens.shape == (1, 9)
    assert abs(r.tokens.sum().item() + r.absorbed - r.explained) < 1e-3
    if softmax_relevance:
        assert r.absorbed != 0  # the softmax's bias term keeps some: the tokens alone do not sum to the logit
    else:
        assert r.absorbed == 0 and abs(r.tokens.sum().item() - r.explained) < 1e-3
    assert not any(p.grad is not None for p in model.parameters())  # parameters untouched


def test_biases_keep_relevance():
    model = _model(biases=True)
    tokens = torch.randint(0, 16, (1, 9), generator=torch.Generator().manual_seed(0))
    r = attn_lrp(model, lambda: model(tokens)[0, -1, 3], embedding=model.embed, softmax_relevance=False)
    assert abs(r.tokens.sum().item() - r.explained) > 1e-3


def test_lrp_points_at_the_copied_token():
    model = trained(cross=False)
    tokens, marked, answer = marked_batch(8, torch.Generator().manual_seed(3))
    found = []
    for b in range(8):
        r = attn_lrp(model, lambda: model(tokens[b:b + 1], marked[b:b + 1])[0, answer[b]], embedding=model.embed)
        found.append(int(r.tokens[0].argmax()))
    assert (torch.tensor(found) == marked).float().mean() >= 0.8
