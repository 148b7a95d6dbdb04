"""attnkit inside transformers: the pretrained MiniLM encoder, a causal decoder, masks."""
import pytest
import torch

import attnkit
from attnkit.integrations import hf, minilm
from attnkit.integrations.hf_masks import pad_queries_to_keys, reduce_for_maskless

from ..cache.helpers import tiny_llama

SENTENCES = [
    "The lighthouse keeper wound the clock before the storm arrived.",
    "Rain.",
    "She sold the old bicycle to a neighbour who repairs them for children.",
    "Two cups of flour, one egg.",
]


@pytest.fixture(scope="module")
def encoder():
    return minilm.load("eager")


def test_minilm_softmax_matches_eager_with_padding(encoder):
    model, tok = encoder
    expected = minilm.embed(model, tok, SENTENCES)
    ours, _ = minilm.load("attnkit_softmax")  # from_pretrained(..., attn_implementation=...)
    got = minilm.embed(ours, tok, SENTENCES)
    assert (got - expected).abs().max() < 1e-5
    # padding really is honoured: a short sentence embeds the same alone and in the padded batch
    alone = minilm.embed(ours, tok, SENTENCES[1:2])
    assert (alone[0] - got[1]).abs().max() < 1e-5


def test_use_switches_a_loaded_model_and_back(encoder):
    model, tok = encoder
    expected = minilm.embed(model, tok, SENTENCES)
    try:
        hf.use(model, mechanism="softcap", cap=1.0)
        assert model.config._attn_implementation == "attnkit_softcap(cap=1.0)"
        capped = minilm.embed(model, tok, SENTENCES)
        assert (capped - expected).abs().max() > 1e-3  # the mechanism is really in use
        hf.use(model, mechanism="softmax")
        assert (minilm.embed(model, tok, SENTENCES) - expected).abs().max() < 1e-5
    finally:
        model.set_attn_implementation("eager")


def test_every_mechanism_is_registered():
    from transformers import AttentionInterface

    plain = [n for n in attnkit.mechanisms() if not attnkit.spec(n).tensor_names]
    assert all(hf.PREFIX + name in AttentionInterface._global_mapping for name in plain)
    with pytest.raises(ValueError, match="tensor inputs"):
        hf.attention_function("nha")


def test_causal_decoder_with_left_padding_and_cache():
    eager, ours = tiny_llama(implementation="eager"), tiny_llama(implementation="attnkit_softmax")
    ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding on the second row
    with torch.no_grad():
        a = eager(input_ids=ids, attention_mask=mask).logits
        b = ours(input_ids=ids, attention_mask=mask).logits
        assert (a - b)[mask.bool()].abs().max() < 1e-5
        c = ours(input_ids=ids[:1]).logits  # no mask at all: causality comes from module.is_causal
        assert (a[:1] - c).abs().max() < 1e-5
        g_eager = eager.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
        g_ours = ours.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert torch.equal(g_eager, g_ours)


def test_training_dropout_and_unsupported_arguments_are_refused():
    fn = hf.attention_function("softmax")
    module = torch.nn.Module()
    module.is_causal = False
    q = torch.randn(1, 2, 3, 8)
    with pytest.raises(ValueError, match="dropout"):
        fn(module.train(), q, q, q, None, dropout=0.1)
    with pytest.raises(ValueError, match="softcap"):
        fn(module.eval(), q, q, q, None, softcap=30.0)


def test_maskless_mechanisms_get_causality_or_a_clear_error():
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    assert reduce_for_maskless("m", causal, causal=False) is True
    assert reduce_for_maskless("m", torch.ones(1, 1, 5, 5, dtype=torch.bool), causal=False) is False
    additive = torch.zeros(1, 1, 5, 5).masked_fill(~causal, torch.finfo(torch.float32).min)
    assert reduce_for_maskless("m", additive, causal=False) is True
    padded = causal.clone()
    padded[..., 0] = False
    with pytest.raises(ValueError, match="padding"):
        reduce_for_maskless("m", padded, causal=True)
    with pytest.raises(ValueError, match="bias"):
        reduce_for_maskless("m", torch.full((1, 1, 5, 5), 0.5), causal=True)


def test_decode_queries_padded_to_causal_self_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, n, 8, generator=g, dtype=torch.float64) for h, n in ((4, 3), (2, 7), (2, 7)))
    mask = torch.rand(1, 1, 3, 7, generator=g) > 0.3
    padded, padded_mask = pad_queries_to_keys(q, k, mask)
    full = attnkit.attention(padded, k, v, causal=True, mask=padded_mask)[:, :, -3:]
    assert torch.allclose(full, attnkit.attention(q, k, v, causal=True, mask=mask), atol=1e-12)


def test_fidelity_benchmark_softmax_is_exact():
    from attnkit.bench.suites import hf as bench

    assert bench.spearman(torch.tensor([1.0, 3.0, 2.0]), torch.tensor([10.0, 30.0, 20.0])) == pytest.approx(1.0)
    assert bench.spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    row = bench.evaluator(repeats=1)({"mechanism": "softmax"})
    assert row["cosine_min"] > 0.99999 and row["spearman"] == 1.0


def test_maskless_causal_only_mechanism_in_a_decoder(monkeypatch):
    """A mechanism with no mask and only causal-self (like recurrent ones) runs prefill and cached decoding;
    padding is refused. Stand-in: softmax's chunked form registered (for this test only) with those limits."""
    import dataclasses

    from attnkit import registry

    soft = registry.get("softmax")
    fake = dataclasses.replace(soft, name="maskless_test", patterns=frozenset({"causal-self"}), supports_mask=False,
                               fast={"chunked": soft.fast["chunked"]}, default_forms=(), can_run={},
                               auto_when={}, step=None)
    monkeypatch.setitem(registry._REGISTRY, "maskless_test", fake)
    eager, ours = tiny_llama(implementation="eager"), tiny_llama(implementation=hf.register("maskless_test"))
    ids = torch.randint(3, 97, (1, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (eager(input_ids=ids).logits - ours(input_ids=ids).logits).abs().max() < 1e-5
        assert torch.equal(eager.generate(ids, max_new_tokens=4, do_sample=False),
                           ours.generate(ids, max_new_tokens=4, do_sample=False))
        mask = torch.ones(2, 8, dtype=torch.long)
        mask[1, :3] = 0
        with pytest.raises(ValueError, match="padding"):
            ours(input_ids=ids.repeat(2, 1), attention_mask=mask)


def test_use_refuses_unknown_parameters_and_non_transformers_models():
    with pytest.raises(TypeError, match="unexpected keyword"):
        hf.use(tiny_llama(implementation="eager"), mechanism="softmax", no_such_param=1)
    with pytest.raises(TypeError, match="PreTrainedModel"):
        hf.use(torch.nn.Linear(2, 2))
