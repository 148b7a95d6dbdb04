"""``attention(..., return_weights=True)`` and ``attnkit.capture``: through layers, models and transformers."""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.models import DecoderLM, ModelConfig

from ..cache.helpers import tiny_llama


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


def test_generation_records_each_steps_row_and_they_make_the_one_shot_weights():
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=32, dim=16, heads=2, schedule="FF")).double()
    with attnkit.capture(model) as rec:
        tokens = model.generate(torch.randint(0, 32, (1, 4)), 5)
    layer = rec[0].module
    assert [r.weights.shape[2] for r in rec if r.module == layer] == [4, 1, 1, 1, 1]  # the prompt, then a row per step
    with attnkit.capture(model) as whole, torch.no_grad():
        model(tokens[:, :-1])
    assert (rec.sequence(layer) - whole[0].weights).abs().max() < 1e-12


def test_a_compressing_cache_records_the_positions_it_kept():
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=32, dim=16, heads=2, schedule="F"))
    with attnkit.capture(model) as rec:
        model.generate(torch.randint(0, 32, (1, 8)), 4, state=attnkit.cache.layer_states(attnkit.cache.H2O(0.5), 1))
    steps = rec[1:]
    assert all(r.weights.shape[-1] == 5 and r.positions.shape == r.weights.shape[:2] + (5,) for r in steps)
    assert all(int(r.positions[0, 0, -1]) == 8 + i for i, r in enumerate(steps))  # the new token is read at its position
    rows = rec.sequence(rec[0].module)
    assert rows.shape == (1, 2, 11, 11) and (rows.sum(-1) - 1).abs().max() < 1e-5
    evicted = rows[0, 0, -1] == 0
    assert int(evicted[:11].sum()) == 11 - 5  # the last step read 5 of 11 positions, zeros elsewhere


def test_recurrent_incremental_calls_and_mechanisms_without_weights_record_why():
    q, k, v = _qkv()
    with attnkit.capture() as rec:
        attnkit.attention(q, k, v, "linear", causal=True, return_state=True)
        attnkit.attention(q, k, v, "titans", causal=True, **attnkit.spec("titans").tensor_inputs(q, k, v, torch.Generator()))
    assert rec[0].weights is None and "summarises the keys" in rec[0].note
    assert rec[1].weights is None and rec[1].note == attnkit.spec("titans").weights_note
    with pytest.raises(ValueError, match="summarises"):
        rec.stack()
    with pytest.raises(ValueError, match="attnkit.capture"):
        attnkit.attention(q, k, v, causal=True, return_state=True, return_weights=True)


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


def test_output_attentions_under_an_attnkit_implementation_returns_the_weights():
    pytest.importorskip("transformers")
    from attnkit.integrations import hf

    eager = tiny_llama(hidden_size=32, implementation="eager")
    ours = hf.use(tiny_llama(hidden_size=32, implementation="sdpa"), "sliding_window", window=4)
    ids = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = eager(ids, output_attentions=True).attentions
        mine = ours(ids, output_attentions=True).attentions
        assert ours(ids).attentions in (None, ())  # computed only when asked for
    assert len(mine) == 2 and mine[0].shape == theirs[0].shape
    assert mine[0].triu(1).abs().max() == 0 and mine[0].tril(-5).abs().max() == 0  # the window's zeros (4 keys back)
    hf.use(ours, "softmax")
    with torch.no_grad():
        mine = ours(ids, output_attentions=True).attentions
    assert max((a - b).abs().max() for a, b in zip(mine, theirs)) < 1e-5


def test_generate_through_an_attnkit_cache_records_each_steps_row_at_its_positions():
    pytest.importorskip("transformers")
    from attnkit.integrations import hf

    model = hf.use(tiny_llama(hidden_size=32, implementation="sdpa"), "softmax")
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(1))
    with attnkit.capture(model) as rec, torch.no_grad():
        tokens = model.generate(ids, past_key_values=attnkit.cache.Cache(), max_new_tokens=4, min_new_tokens=4,
                                do_sample=False)
        eager = model.set_attn_implementation("eager") or model(tokens[:, :-1], output_attentions=True).attentions
    layer = "model.layers.1.self_attn"
    assert [r.weights.shape[2] for r in rec if r.module == layer][:4] == [12, 1, 1, 1]
    assert (rec.sequence(layer) - eager[1]).abs().max() < 1e-5  # no eviction: the one-shot weights, row by row
    model.set_attn_implementation(hf.register("softmax"))
    with attnkit.capture(model) as rec, torch.no_grad():
        model.generate(ids, past_key_values=attnkit.cache.Cache(attnkit.cache.StreamingLLM(8)), max_new_tokens=4,
                       min_new_tokens=4, do_sample=False)
    last = [r for r in rec if r.module == layer][-1]
    assert last.positions[0, 0].tolist() == [0, 1, 2, 3, 10, 11, 12, 13, 14]  # sinks, the window, the new token
    row = rec.sequence(layer)[0, :, -1]
    assert row[:, 4:10].abs().max() == 0 and ((row.sum(-1) - 1).abs() < 1e-5).all()
