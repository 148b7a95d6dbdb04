"""Hymba's options: meta tokens, cross-layer KV sharing, the full/sliding-window layer recipe."""
import pytest
import torch

from attnkit.models import DecoderLM, Encoder, ModelConfig, hymba_config
from attnkit.models.hymba import full_attention_layers
from attnkit.models.kv_sharing import SharedKVAttention, SharedKVState

from .lm_checks import assert_generate_equals_recompute


def heads(t, n):
    return t.unflatten(-1, (n, -1)).transpose(1, 2)


def causal_softmax(q, k, v):
    n = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, -1) @ v


def test_meta_tokens_and_shared_kv_match_the_equations_in_float64():
    """x = [meta || embed(tokens)]; layer 0 attends with its own q, k, v; layer 1 with its own q over
    layer 0's keys and values (K_1 = K_0 = norm_0(x_0) W_K^0); the meta positions' logits are dropped."""
    torch.manual_seed(0)
    lm = DecoderLM(ModelConfig(vocab_size=20, dim=16, heads=2, schedule="FF", meta_tokens=3, kv_sharing=True)).double()
    tokens = torch.randint(0, 20, (2, 7))
    b0, b1 = lm.blocks
    a0, a1 = b0.mixer, b1.mixer
    assert isinstance(a1, SharedKVAttention) and not hasattr(a1, "k_proj")

    def attend(attn_q, x_kv, producer):
        pos = torch.arange(x_kv.shape[1])
        q = producer.rope.rotate(heads(attn_q, 2), pos)
        k = producer.rope.rotate(heads(producer.k_proj(x_kv), 2), pos)
        return causal_softmax(q, k, heads(producer.v_proj(x_kv), 2)).transpose(1, 2).flatten(2)

    x = torch.cat([lm.meta.expand(2, -1, -1), lm.embed(tokens)], dim=1)
    h0 = b0.mixer_norm(x)
    x = x + a0.out_proj(attend(a0.q_proj(h0), h0, a0))
    x = x + b0.mlp(b0.mlp_norm(x))
    x = x + a1.out_proj(attend(a1.q_proj(b1.mixer_norm(x)), h0, a0))
    x = x + b1.mlp(b1.mlp_norm(x))
    want = lm.head(lm.norm(x))[:, 3:]
    with torch.no_grad():
        assert (lm(tokens) - want).abs().max() < 1e-12


def test_hymba_recipe_generates_as_it_recomputes_and_shares_caches():
    torch.manual_seed(1)
    cfg = hymba_config(vocab_size=30, dim=32, heads=4, layers=6, window=4, meta_tokens=2, ssm="mamba2")
    assert full_attention_layers(6) == (0, 3, 5) and cfg.schedule == "FSSFSF"
    assert cfg.kv_producers() == [None, None, 1, None, None, None]
    lm = DecoderLM(cfg).eval()
    assert [b.mixer.branches[0].mechanism for b in lm.blocks] == ["softmax", "sinks_window", "sinks_window",
                                                                  "softmax", "sinks_window", "softmax"]
    prompt = torch.randint(0, 30, (2, 5))
    out = assert_generate_equals_recompute(lm, prompt, 6)
    with torch.no_grad():
        full = lm(out)
        a, state = lm(out[:, :4], return_state=True)
        b, state = lm(out[:, 4:], state=state, return_state=True)
    assert (torch.cat([a, b], 1) - full).abs().max() < 1e-5
    shared = state[2].states[0]
    assert isinstance(shared, SharedKVState) and shared.numel() == 0 and shared.length == out.shape[1] + 2
    assert state[2].states[1].numel() > 0  # the SSM branch keeps its own state


def test_option_errors_name_the_option():
    with pytest.raises(ValueError, match="meta_tokens"):
        ModelConfig(meta_tokens=-1)
    with pytest.raises(TypeError, match="kv_sharing"):
        ModelConfig(kv_sharing=1)
    with pytest.raises(ValueError, match="kv_sharing"):
        ModelConfig(schedule="FG", mixers={"F": "softmax", "G": "softmax"}, kv_sharing=True)
    with pytest.raises(ValueError, match="kv_sharing"):
        ModelConfig(schedule="GG", mixers={"G": "mamba2"}, kv_sharing=True)
    with pytest.raises(ValueError, match="Encoder"):
        Encoder(ModelConfig(schedule="FF", meta_tokens=2))
    with pytest.raises(ValueError, match="layers"):
        hymba_config(layers=0)
