"""RAT: a linear recurrence inside chunks, softmax attention across chunks.

Wei, Yadav, Pascanu & Gulcehre, "RAT: Bridging RNN Efficiency and Attention
Accuracy in Language Modeling" (2025). Positions are cut into chunks of ``L``
tokens. Inside a chunk, keys and values run a gated recurrence that restarts
at every chunk start (one gate ``g_t in (0, 1)^D`` per channel, shared by k and v)::

    k~_t = g_t * k~_{t-1} + (1 - g_t) * k_t,   v~_t = g_t * v~_{t-1} + (1 - g_t) * v_t

and the query at position ``t`` of chunk ``c`` attends with one softmax over the
last recurrent key/value of every earlier chunk and its own running ``(k~_t, v~_t)``.

The state is the chunk summaries seen so far (``k_end``, ``v_end``: ``N / L``
entries, an ``L``-times smaller KV cache) plus the running ``k_cur``, ``v_cur``.
Three forms return ``(out, (k_end, v_end, k_cur, v_cur))``: ``rat_parallel`` (token
loop for the recurrence, materialised masked softmax: the reference),
``rat_chunked`` (the recurrence for all chunks at once, ``L`` steps) and
``rat_recurrent`` (token by token, as in decoding).
"""
from __future__ import annotations

import torch


def _attend(q, k_run, v_run, k_end, v_end, positions, L):
    """Softmax over the visible chunk summaries (chunk index < own chunk) and the own running pair."""
    scores = q @ k_end.transpose(-1, -2)
    visible = torch.arange(k_end.shape[2], device=q.device)[None, :] < (positions // L)[:, None]
    scores = scores.masked_fill(~visible, float("-inf"))
    own = (q * k_run).sum(-1, keepdim=True)
    p = torch.softmax(torch.cat([scores, own], dim=-1), dim=-1)
    return p[..., :-1] @ v_end + p[..., -1:] * v_run


def _summaries(k_run, v_run, positions, L, k_end, v_end):
    """Append the running pairs at chunk ends (position % L == L - 1) to the summaries."""
    ends = ((positions % L) == L - 1).nonzero().flatten()
    return torch.cat([k_end, k_run[:, :, ends]], dim=2), torch.cat([v_end, v_run[:, :, ends]], dim=2)


def rat_parallel(q, k, v, g, *, L, start, k_end, v_end, k_cur, v_cur):
    """Reference: the recurrence token by token, then the masked softmax materialised."""
    k_run, v_run, ks, vs = k_cur, v_cur, [], []
    for t in range(k.shape[2]):
        g_t = g[:, :, t]
        keep = 0.0 if (start + t) % L == 0 else g_t  # a chunk start restarts the recurrence
        k_run = keep * k_run + (1 - g_t) * k[:, :, t]
        v_run = keep * v_run + (1 - g_t) * v[:, :, t]
        ks.append(k_run)
        vs.append(v_run)
    k_run, v_run = torch.stack(ks, dim=2), torch.stack(vs, dim=2)
    positions = torch.arange(start, start + k.shape[2], device=q.device)
    k_end, v_end = _summaries(k_run, v_run, positions, L, k_end, v_end)
    out = _attend(q, k_run, v_run, k_end, v_end, positions, L)
    return out, (k_end, v_end, k_run[:, :, -1], v_run[:, :, -1])


def rat_chunked(q, k, v, g, *, L, start, k_end, v_end, k_cur, v_cur):
    """The recurrence for every chunk at once (``L`` vectorised steps), then the same softmax.

    A piece that starts mid-chunk is aligned to the chunk grid by ``start % L`` leading
    tokens whose last one is ``(k_cur, v_cur)`` with gate 0, so the scan resumes from them.
    """
    B, H, N, D = k.shape
    lead = start % L
    if lead:
        k, v, g = (_prepend(x, lead, last) for x, last in ((k, k_cur), (v, v_cur), (g, torch.zeros_like(g[:, :, 0]))))
    total = k.shape[2]
    pad = -total % L
    n = (total + pad) // L
    k, v, g = (_append_zeros(x, pad).reshape(B, H, n, L, x.shape[-1]) for x in (k, v, g))
    k_run, v_run, ks, vs = None, None, [], []
    for i in range(L):
        g_i = g[:, :, :, i]
        k_new, v_new = (1 - g_i) * k[:, :, :, i], (1 - g_i) * v[:, :, :, i]
        k_run = k_new if i == 0 else g_i * k_run + k_new
        v_run = v_new if i == 0 else g_i * v_run + v_new
        ks.append(k_run)
        vs.append(v_run)
    k_run = torch.stack(ks, dim=3).reshape(B, H, n * L, D)[:, :, lead : lead + N]
    v_run = torch.stack(vs, dim=3).reshape(B, H, n * L, v.shape[-1])[:, :, lead : lead + N]
    positions = torch.arange(start, start + N, device=q.device)
    k_end, v_end = _summaries(k_run, v_run, positions, L, k_end, v_end)
    out = _attend(q, k_run, v_run, k_end, v_end, positions, L)
    return out, (k_end, v_end, k_run[:, :, -1], v_run[:, :, -1])


def rat_recurrent(q, k, v, g, *, L, start, k_end, v_end, k_cur, v_cur):
    """Decoding: one token at a time against the summaries of the finished chunks."""
    k_run, v_run, outs = k_cur, v_cur, []
    for t in range(k.shape[2]):
        pos, g_t = start + t, g[:, :, t]
        if pos % L == 0:
            k_run, v_run = (1 - g_t) * k[:, :, t], (1 - g_t) * v[:, :, t]
        else:
            k_run, v_run = g_t * k_run + (1 - g_t) * k[:, :, t], g_t * v_run + (1 - g_t) * v[:, :, t]
        q_t = q[:, :, t]
        scores = torch.cat([(k_end @ q_t[..., None]).squeeze(-1), (q_t * k_run).sum(-1, keepdim=True)], dim=-1)
        p = torch.softmax(scores, dim=-1)
        outs.append((p[..., None, :-1] @ v_end).squeeze(-2) + p[..., -1:] * v_run)
        if pos % L == L - 1:
            k_end, v_end = torch.cat([k_end, k_run[:, :, None]], dim=2), torch.cat([v_end, v_run[:, :, None]], dim=2)
    return torch.stack(outs, dim=2), (k_end, v_end, k_run, v_run)


def _prepend(x, lead, last):
    zeros = x.new_zeros(*x.shape[:2], lead - 1, *x.shape[3:])
    return torch.cat([zeros, last[:, :, None], x], dim=2)


def _append_zeros(x, pad):
    return x if pad == 0 else torch.cat([x, x.new_zeros(*x.shape[:2], pad, *x.shape[3:])], dim=2)
