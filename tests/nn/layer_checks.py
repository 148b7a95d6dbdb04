"""What the layer tests share: a parameter count, parameters moved off their initial values, one head of scaled dot-product softmax attention written
out, and decoding in pieces with the returned states checked against one call."""
from __future__ import annotations

import torch


def parameter_count(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def perturbed(module):
    """``module`` with every parameter moved off its initial value (by 0.3 standard normal), so that each term of
    an equation written out counts."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module


def softmax_head(q, k, v, causal):
    """``softmax(q k^T / sqrt(d)) v`` for one head, ``(B, N, d)`` each; causal: key ``j <= i`` only."""
    N, d = q.shape[-2], q.shape[-1]
    s = q @ k.transpose(-1, -2) / d ** 0.5
    if causal:
        s = s.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v


def assert_continues_in_pieces(layer, x, cuts, **call):
    """``layer`` over ``x (B, N, dim)`` cut at the token positions ``cuts``, each piece continuing the state the
    last returned, gives one call's output; continuing again from the first state gives the second piece again
    (a state is a value). ``call``: the layer's other arguments (``causal=True``). Returns the states."""
    whole = layer(x, **call)
    bounds = (0, *cuts, x.shape[1])
    state, outs, states = None, [], []
    for lo, hi in zip(bounds, bounds[1:]):
        out, state = layer(x[:, lo:hi], state=state, return_state=True, **call)
        outs.append(out)
        states.append(state)
    torch.testing.assert_close(torch.cat(outs, dim=1), whole)
    torch.testing.assert_close(layer(x[:, bounds[1]:bounds[2]], state=states[0], **call), outs[1])
    return states
