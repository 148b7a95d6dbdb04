"""What the Combiner tests share: float64 inputs, and the checks every Combiner factorisation must pass
(full attention: every visible key weighted, rows summing to one; a state that is a value; decoding token
by token equal to one call)."""
from __future__ import annotations

import torch

import attnkit


def qkv(n=23, heads=2, kv_heads=1, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, n, d, generator=g, dtype=torch.float64)
    k = torch.randn(1, kv_heads, n, d, generator=g, dtype=torch.float64)
    v = torch.randn(1, kv_heads, n, d, generator=g, dtype=torch.float64)
    return q, k, v


def assert_full_attention(w, causal=True):
    """The weights ``w (B, H, N, N)`` reach every visible key (> 0), no other, and sum to one per row."""
    n = w.shape[-1]
    visible = torch.ones(n, n, dtype=torch.bool)
    if causal:
        visible = visible.tril()
    assert (w[..., visible] > 0).all() and (w[..., ~visible] == 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))


def assert_state_is_a_value(name, q, k, v, split, **params):
    """A state returned after the first ``split`` tokens gives the same rest twice (calls never change it)."""
    kw = dict(causal=True, return_state=True, **params)
    _, state = attnkit.attention(q[:, :, :split], k[:, :, :split], v[:, :, :split], name, state=None, **kw)
    rest = q[:, :, split:], k[:, :, split:], v[:, :, split:]
    first, _ = attnkit.attention(*rest, name, state=state, **kw)
    again, _ = attnkit.attention(*rest, name, state=state, **kw)
    torch.testing.assert_close(first, again, rtol=0, atol=0)


def assert_decoding_equals_one_call(name, q, k, v, **params):
    """Token by token with the returned state gives one causal call's output."""
    whole = attnkit.attention(q, k, v, name, causal=True, **params)
    state, outs = None, []
    for i in range(q.shape[2]):
        out, state = attnkit.attention(q[:, :, i:i + 1], k[:, :, i:i + 1], v[:, :, i:i + 1], name, causal=True,
                                       state=state, return_state=True, **params)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=2), whole)
