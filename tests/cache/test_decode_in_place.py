"""The transformers cache evicts in place while decoding: the same tokens, keys, values and generated tokens as
copying the kept tokens to a new buffer, in one buffer per layer."""
import pytest
import torch

pytest.importorskip("transformers")

from attnkit.cache import H2O, TOVA, Cache, CacheLayer, KeyNorm, StreamingLLM  # noqa: E402

from .helpers import prompt, tiny_llama  # noqa: E402

PER_TOKEN = 2 * (2 * 16 * 4) + 2 * 4  # tiny_llama: 2 kv heads x (key + value of 16 float32 + int32 position)


def decoded(model, ids, policy):
    cache = Cache(policy, model=model if policy.needs_scores else None, prompt=ids.shape[1])
    out = model.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False, cache=cache,
                         prefill_chunk_size=16, output_scores=True, return_dict_in_generate=True)
    cache.close()
    return out, cache


@pytest.mark.parametrize("make", [lambda: StreamingLLM(32, sinks=4, slack=4), lambda: H2O(32, slack=4),
                                  lambda: TOVA(32, slack=4), lambda: KeyNorm(32, slack=4)],
                         ids=["streaming", "h2o", "tova", "knorm"])
def test_decoding_in_place_keeps_what_copying_keeps_in_one_buffer_per_layer(make, monkeypatch):
    model, ids = tiny_llama(), prompt(64)
    moved, in_place = decoded(model, ids, make())
    monkeypatch.setattr(CacheLayer, "_evicts_in_place", lambda self, store, chosen: store.length <= store.prompt)
    copied, copying = decoded(model, ids, make())
    assert torch.equal(moved.sequences, copied.sequences)
    for ours, theirs in zip(moved.scores, copied.scores):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    for ours, theirs in zip(in_place.layers, copying.layers):
        assert ours.store.used == theirs.store.used == 33  # 11 calls after the prompt: evicted to 32 at 37, 37, then 1 more
        for a, b in ((ours.store.pos, theirs.store.pos), (ours.store.k, theirs.store.k), (ours.store.v, theirs.store.v)):
            assert torch.equal(a, b)
    # budget + chunk = 48 slots per layer from the prefill on; copying writes budget + slack + 1 = 37 new slots
    # while the attention still reads the old buffer
    assert in_place.peak_bytes == 2 * 48 * PER_TOKEN
    assert copying.peak_bytes == (48 + 48 + 37) * PER_TOKEN


def test_a_buffer_much_larger_than_the_kept_tokens_is_copied_out_of():
    model, ids = tiny_llama(), prompt(64)
    cache = Cache(StreamingLLM(16, sinks=4, when="decode"))  # the whole prompt's 64 slots, evicted at decode
    model.generate(ids, max_new_tokens=3, do_sample=False, cache=cache)
    assert [layer.store.capacity for layer in cache.layers] == [17, 17]
    assert cache.peak_bytes == (64 + 17 + 64) * PER_TOKEN
