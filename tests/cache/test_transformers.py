"""The cache inside Hugging Face generate (tiny random Llama with GQA and RoPE) and attnkit's own LM."""
import pytest
import torch

pytest.importorskip("transformers")
from transformers import DynamicCache  # noqa: E402

import attnkit  # noqa: E402
from attnkit.cache import H2O, Cache, KeyNorm, NoCompression, StreamingLLM  # noqa: E402

from .helpers import prompt, tiny_llama  # noqa: E402


def generate(model, ids, cache, n=12):
    return model.generate(ids, max_new_tokens=n, do_sample=False, cache=cache)


def test_no_compression_generates_what_dynamic_cache_generates():
    model, ids = tiny_llama(), prompt()
    ours = Cache(NoCompression())
    assert torch.equal(generate(model, ids, ours), generate(model, ids, DynamicCache(config=model.config)))
    assert ours.get_seq_length() == ids.shape[1] + 11 and ours.layers[0].store.used == ids.shape[1] + 11


def test_a_compressed_cache_holds_its_budget_and_queries_keep_their_true_positions():
    model, ids = tiny_llama(), prompt()
    positions = []
    hook = model.model.rotary_emb.register_forward_pre_hook(
        lambda module, args, kwargs: positions.append(kwargs["position_ids"].flatten().tolist()), with_kwargs=True)
    cache = Cache(StreamingLLM(16, sinks=4))
    out = generate(model, ids, cache)
    hook.remove()
    assert positions[0] == list(range(40)) and [p for (p,) in positions[1:]] == list(range(40, 51))
    assert cache.get_seq_length() == 51 and all(layer.store.used == 16 for layer in cache.layers)
    store = cache.layers[0].store
    assert store.pos[0, 0].tolist() == [0, 1, 2, 3] + list(range(39, 51))
    # layer 0's kept keys carry the rotation of their own position: recompute them over the whole sequence
    full = DynamicCache(config=model.config)
    model(out[:, :-1], cache=full)
    torch.testing.assert_close(store.k, full.layers[0].keys.gather(2, store.pos.long()[..., None].expand(-1, -1, -1, 16)))


def test_a_policy_on_the_hf_model_and_on_attention_keeps_the_same_tokens(monkeypatch):
    model, ids = tiny_llama(), prompt()
    seen = []
    original = attnkit.cache.CacheLayer.update

    def recording(self, key_states, value_states, *args, **kwargs):
        if self.layer_idx == 1:
            seen.append((self._owner._queries[1][0].clone(), key_states.clone(), value_states.clone()))
        return original(self, key_states, value_states, *args, **kwargs)

    monkeypatch.setattr(attnkit.cache.CacheLayer, "update", recording)
    cache = Cache(H2O(0.5, recent=0.25), model=model)
    generate(model, ids, cache, n=6)
    state = attnkit.cache.KVState(H2O(0.5, recent=0.25), layer=1)
    for q, k, v in seen:
        _, state = attnkit.attention(q, k, v, "softmax", causal=True, state=state, return_state=True)
    assert torch.equal(state.store.pos, cache.layers[1].store.pos)
    cache.close()


def test_attnkit_lm_with_no_compression_generates_its_own_tokens():
    from attnkit.models import DecoderLM, ModelConfig

    torch.manual_seed(0)
    lm = DecoderLM(ModelConfig(vocab_size=97, dim=32, heads=4, kv_heads=2, schedule="FF")).eval()
    ids = prompt(24)
    states = attnkit.cache.layer_states(None, 2)
    assert torch.equal(lm.generate(ids, 10, state=states), lm.generate(ids, 10))
    squeezed = lm.generate(ids, 10, state=attnkit.cache.layer_states(KeyNorm(12), 2))
    assert squeezed.shape == (1, 34)


def test_policy_that_needs_scores_without_the_model_is_refused():
    model, ids = tiny_llama(), prompt()
    with pytest.raises(ValueError, match="model="):
        generate(model, ids, Cache(H2O(0.5)))


def test_a_cache_reused_on_a_model_of_another_shape_is_refused():
    ids = prompt()
    cache = Cache(StreamingLLM(16))
    generate(tiny_llama(), ids, cache, n=2)
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4)).eval()
    with pytest.raises(ValueError, match="belongs to one model"):
        other(ids[:, :1], cache=cache)
