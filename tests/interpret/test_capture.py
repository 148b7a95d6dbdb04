"""``attention(..., return_weights=True)`` and ``attnkit.capture``: through layers, models and transformers."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.models import DecoderLM, ModelConfig


def _qkv(B=1, H=2, N=9, D=8, Hkv=None, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N, D, generator=g, dtype=dtype)
    k = torch.randn(B, Hkv or H, N, D, generator=g, dtype=dtype)
    v = torch.randn(B, Hkv or H, N, D, generator=g, dtype=dtype)
    return q, k, v


def test_softmax_weights_are_the_softmax_of_the_scores_and_the_fast_output_is_returned():
    q, k, v = _qkv(H=4, Hkv=2)
    out, w = attnkit.attention(q, k, v, causal=True, return_weights=True)
    kk = k.repeat_interleave(2, dim=1)
    expected = (q @ kk.transpose(-1, -2) / 8**0.5).masked_fill(~torch.ones(9, 9, dtype=torch.bool).tril(),
                                                                float("-inf")).softmax(-1)
    assert (w - expected).abs().max() < 1e-12
    assert (out - attnkit.attention(q, k, v, causal=True)).abs().max() == 0


def test_pattern_weights_are_zero_outside_the_pattern_and_fully_masked_rows_are_zero():
    q, k, v = _qkv(N=12)
    _, w = attnkit.attention(q, k, v, "sliding_window", causal=True, window=3, return_weights=True)
    i, j = torch.meshgrid(torch.arange(12), torch.arange(12), indexing="ij")
    assert w[..., (j > i) | (i - j > 3)].abs().max() == 0 and (w.sum(-1) - 1).abs().max() < 1e-12
    _, w = attnkit.attention(q, k, v, mask=torch.zeros(12, 12, dtype=torch.bool), return_weights=True)
    assert not w.isnan().any() and w.abs().max() == 0


def test_return_weights_refusals_name_the_reason():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="one-shot"):
        attnkit.attention(q, k, v, causal=True, return_state=True, return_weights=True)
    with pytest.raises(ValueError, match="dropout_p"):
        attnkit.attention(q, k, v, dropout_p=0.1, return_weights=True)
    with pytest.raises(TypeError, match="return_weights"):
        attnkit.attention(q, k, v, return_weights=1)
    spec = attnkit.spec("titans")
    with pytest.raises(ValueError, match="no attention weights: the memory is an MLP"):
        attnkit.attention(q, k, v, "titans", causal=True, return_weights=True,
                          **spec.tensor_inputs(q, k, v, torch.Generator().manual_seed(0)))
    assert "no attention matrix" in attnkit.describe("titans")
    assert "weights @ v is the output" in attnkit.describe("gla")


def test_capture_names_the_modules_of_a_model_and_stacks_their_weights():
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=32, dim=16, heads=2, schedule="FLF",
                                  mixers={"F": "softmax", "L": "linear"}))
    tokens = torch.randint(0, 32, (2, 7))
    with attnkit.capture(model) as rec:
        logits = model(tokens)
    assert len(rec) == 3 and [r.mechanism for r in rec] == ["softmax", "linear", "softmax"]
    assert all(r.module.startswith(f"blocks.{i}.") for i, r in enumerate(rec))
    assert rec.stack().shape == (3, 2, 2, 7, 7)
    assert (rec[0].weights.sum(-1) - 1).abs().max() < 1e-5 and rec[0].weights.triu(1).abs().max() == 0
    assert (model(tokens) - logits).abs().max() < 1e-5  # the recording changes nothing


def test_capture_with_grad_gives_the_gradient_of_the_weights():
    torch.manual_seed(0)
    layer = attnkit.nn.Attention(16, 2, mechanism="softmax")
    x = torch.randn(1, 5, 16)
    with attnkit.capture(layer, grad=True) as rec:
        out = layer(x, causal=True)
    out.sum().backward()
    w = rec[0].weights
    assert w.grad is not None and w.grad.shape == w.shape
    with attnkit.capture(layer) as plain:
        again = layer(x, causal=True)
    assert (again - out).abs().max() < 1e-5 and plain[0].weights.grad is None and not plain[0].weights.requires_grad


def test_incremental_calls_and_mechanisms_without_weights_record_why():
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=32, dim=16, heads=2, schedule="F"))
    with attnkit.capture(model) as rec:
        model.generate(torch.randint(0, 32, (1, 4)), 2)
    assert all(r.weights is None and "incremental" in r.note for r in rec)
    with pytest.raises(ValueError, match="incremental"):
        rec.stack()


def test_cache_policies_record_the_kept_keys():
    q, k, v = _qkv(N=16)
    with attnkit.capture() as rec:
        attnkit.attention(q, k, v, "tova", causal=True, budget=4)
    kept, w = rec[0].kept, rec[0].weights
    assert kept.shape == w.shape and int(kept[0, 0, -1].sum()) == 5  # the budget and the new token
    assert w[~kept].abs().max() == 0


def test_minilm_through_transformers_records_every_layer(minilm_model):
    from attnkit.integrations import hf

    model, tokenizer = minilm_model
    batch = tokenizer(["a cat sat on the mat", "dogs"], padding=True, return_tensors="pt")
    eager = model(**batch, output_attentions=True).attentions
    try:
        hf.use(model, "softmax")
        with attnkit.capture(model) as rec, torch.no_grad():
            model(**batch)
    finally:
        model.set_attn_implementation("eager")
    assert len(rec) == 6 and all(".attention" in r.module for r in rec)
    for ours, theirs in zip(rec, eager):
        assert (ours.weights - theirs).abs().max() < 1e-5
    padded = batch["attention_mask"][1] == 0
    assert rec[0].weights[1][..., padded].abs().max() == 0  # no weight on padding
