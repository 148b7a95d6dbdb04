"""Tiny models and float64 inputs for the cache tests and others (random weights, no download)."""
import torch

import attnkit


def tiny_llama(layers=2, seed=0, *, hidden_size=64, implementation=None):
    """A random Llama (4 heads, 2 kv heads, vocabulary 97) in eval mode, with ``implementation`` as its attention
    implementation if given."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512)
    model = LlamaForCausalLM(cfg).eval()
    if implementation is not None:
        model.set_attn_implementation(implementation)
    return model


def prompt(n=40, seed=1, batch=1):
    return torch.randint(0, 97, (batch, n), generator=torch.Generator().manual_seed(seed))


def qkv(n=32, heads=4, kv_heads=2, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, n, d, generator=g, dtype=dtype)
    k = torch.randn(1, kv_heads, n, d, generator=g, dtype=dtype)
    v = torch.randn(1, kv_heads, n, d, generator=g, dtype=dtype)
    return q, k, v


def run(policy, q, k, v, prompt_len, layer=0):
    """Prefill ``prompt_len`` tokens, then decode the rest one at a time; returns (outputs, states)."""
    state = attnkit.cache.KVState(policy, layer)
    outs, states = [], []
    for lo, hi in [(0, prompt_len)] + [(t, t + 1) for t in range(prompt_len, q.shape[2])]:
        out, state = attnkit.attention(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], "softmax", causal=True,
                                       state=state, return_state=True)
        outs.append(out)
        states.append(state)
    return torch.cat(outs, dim=2), states
