"""KIVI storage: dequantised values within half a step of the originals, bytes as the scheme says, decode exact."""
import pytest
import torch

import attnkit
from attnkit.cache import KIVI, KVState
from attnkit.cache.quantised import pack, unpack

from .helpers import qkv


def fed(bits, n=80, group=8, residual=16):
    q, k, v = qkv(n=n, d=16, dtype=torch.float32)
    state = KVState(KIVI(bits, group=group, residual=residual))
    outs = []
    for lo, hi in [(0, 50)] + [(t, t + 1) for t in range(50, n)]:
        out, state = attnkit.attention(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], "softmax", causal=True,
                                       state=state, return_state=True)
        outs.append(out)
    return q, k, v, torch.cat(outs, 2), state.store


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_pack_unpack_round_trips(bits):
    codes = torch.randint(0, 2**bits, (3, 16), dtype=torch.uint8)
    assert torch.equal(unpack(pack(codes, bits), bits), codes)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_dequantised_keys_and_values_are_within_half_a_step(bits):
    _, k, v, _, store = fed(bits)
    n, G = store.quantised, 8
    assert n == 64 and store.used == 80  # 16 residual tokens stay exact
    kg = k[:, :, :n].unflatten(2, (-1, G))  # keys: per channel over G tokens
    k_step = (kg.amax(3) - kg.amin(3)) / (2**bits - 1)
    k_err = (store.k[:, :, :n] - k[:, :, :n]).unflatten(2, (-1, G)).abs()
    assert (k_err <= k_step[:, :, :, None] / 2 + 1e-6).all()
    vg = v[:, :, :n].unflatten(-1, (-1, G))  # values: per token over G channels
    v_step = (vg.amax(-1) - vg.amin(-1)) / (2**bits - 1)
    v_err = (store.v[:, :, :n] - v[:, :, :n]).unflatten(-1, (-1, G)).abs()
    assert (v_err <= v_step[..., None] / 2 + 1e-6).all()
    assert torch.equal(store.k[:, :, n:], k[:, :, n:]) and torch.equal(store.v[:, :, n:], v[:, :, n:])


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_bytes_are_the_packed_codes_scales_and_residual(bits):
    *_, store = fed(bits)
    B, H, D, G, n = 1, 2, 16, 8, 64
    codes = 2 * B * H * n * D * bits // 8
    scales = 2 * 4 * (B * H * (n // G) * D + B * H * n * (D // G))  # scale + minimum, float32
    residual = 2 * B * H * 16 * D * 4
    assert store.nbytes() == codes + scales + residual


def test_decode_is_attention_over_the_dequantised_cache():
    q, k, v, out, store = fed(4)
    s = (q[..., -1:, :] @ store.k.repeat_interleave(2, 1).transpose(-1, -2)) / 4
    torch.testing.assert_close(out[..., -1:, :], torch.softmax(s, -1) @ store.v.repeat_interleave(2, 1))


def test_kivi_in_generate_keeps_every_token_in_fewer_bytes():
    pytest.importorskip("transformers")
    from transformers import DynamicCache

    from .helpers import prompt, tiny_llama

    model, ids = tiny_llama(), prompt(100)
    cache = attnkit.cache.Cache(KIVI(8, group=16, residual=16))
    ours = model.generate(ids, max_new_tokens=8, do_sample=False, cache=cache)
    full = model.generate(ids, max_new_tokens=8, do_sample=False, cache=DynamicCache(config=model.config))
    assert cache.get_seq_length() == 107 and cache.layers[0].store.used == 107
    # 80 tokens in int8 (+ a float32 scale and minimum per 16 numbers), 27 in float32, of 107 float32 tokens
    assert cache.nbytes() == 2 * 2 * 2 * 16 * (80 * (1 + 2 * 4 / 16) + 27 * 4)
    assert (ours == full).float().mean() > 0.9  # int8 barely moves a random model


def test_kivi_parameters_are_checked():
    with pytest.raises(ValueError, match="bits"):
        KIVI(3)
    q, k, v = qkv(d=12)
    with pytest.raises(ValueError, match="group"):
        attnkit.attention(q, k, v, "softmax", causal=True, state=KVState(KIVI(4, group=8)))


def test_kivi_under_a_policy_quantises_the_tokens_it_kept_within_half_a_step():
    from attnkit.cache import H2O, SnapKV, StreamingLLM

    q, k, v = qkv(n=40, d=16, dtype=torch.float32)
    policy = KIVI(4, group=8, residual=8, under=StreamingLLM(20, sinks=4, when="prefill"))
    state, outs = KVState(policy), []
    for lo, hi in [(0, 32)] + [(t, t + 1) for t in range(32, 40)]:
        out, state = attnkit.attention(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], "softmax", causal=True,
                                       state=state, return_state=True)
        outs.append(out)
        if lo == 0:
            prefilled = state.store
    kept = [0, 1, 2, 3] + list(range(16, 32))
    assert prefilled.pos[0, 0].tolist() == kept and prefilled.quantised == 8 and prefilled.used == 20
    n = 8  # the first 8 kept tokens are quantised, keys per channel over them
    kg = k[:, :, kept[:n]]
    step = (kg.amax(2) - kg.amin(2)) / 15
    assert ((prefilled.k[:, :, :n] - kg).abs() <= step[:, :, None] / 2 + 1e-6).all()
    torch.testing.assert_close(prefilled.k[:, :, n:], k[:, :, kept[n:]])  # the residual stays exact
    # bytes: per kv head 8 quantised tokens (key and value codes at 4 bits, fp32 scale + minimum per key channel
    # group and per value token group), 12 residual tokens in fp32, 20 int32 positions
    per_head = 8 * 16 // 2 * 2 + 16 * 2 * 4 + 8 * 2 * 2 * 4 + 12 * 16 * 2 * 4 + 20 * 4
    assert prefilled.nbytes() == 2 * per_head
    store = state.store  # decode: attention over the dequantised kept tokens and the new exact ones
    assert store.pos[0, 0].tolist() == kept + list(range(32, 40)) and store.length == 40
    t = 39
    keys, values = store.k[0, :, :], store.v[0, :, :]
    for h in range(4):
        s = q[0, h, t] @ keys[h // 2].T / 16**0.5
        torch.testing.assert_close(outs[-1][0, h, 0], torch.softmax(s, -1) @ values[h // 2], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="when='prefill'"):
        KIVI(4, under=H2O(0.5))
    assert KIVI(4, under=SnapKV(0.25)).needs_scores
