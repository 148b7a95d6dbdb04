"""What the tests of layers that change how heads are made share: a parameter count, one head of scaled
dot-product softmax attention written out, and decoding in pieces with the returned state checked against
one call."""
from __future__ import annotations

import torch


def parameter_count(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def softmax_head(q, k, v, causal):
    """``softmax(q k^T / sqrt(d)) v`` for one head, ``(B, N, d)`` each; causal: key ``j <= i`` only."""
    N, d = q.shape[-2], q.shape[-1]
    s = q @ k.transpose(-1, -2) / d ** 0.5
    if causal:
        s = s.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v


def assert_decodes_in_pieces(layer, x, piece):
    """``layer`` over ``x (B, N, dim)`` in pieces of ``piece`` tokens, each continuing the state returned by the
    last, gives the one causal call's output."""
    whole = layer(x, causal=True)
    state, parts = None, []
    for t in range(0, x.shape[1], piece):
        out, state = layer(x[:, t:t + piece], causal=True, state=state, return_state=True)
        parts.append(out)
    torch.testing.assert_close(torch.cat(parts, dim=1), whole)
