"""Aaren's stateful forms: parallel (the reference), chunked, scan and recurrent (equations in the package docstring)."""
from __future__ import annotations

import torch

from ...state import RecurrentState, expect_state
from ...kernels.positions import repeat_kv
from ...validation import check_int

PAPER = "Attention as an RNN"
NAMES = ("m", "u", "w")


def _prepare(q, k, v, scale, initial_state, chunk_size):
    check_int("chunk_size", chunk_size)
    B, H = q.shape[:2]
    k, v = repeat_kv(k, H), repeat_kv(v, H)
    shapes = {"m": (B, H), "u": (B, H), "w": (B, H, v.shape[-1])}
    state = expect_state(initial_state, NAMES, shapes, q)
    scores = scale * (q * k).sum(-1)  # (B, H, N): token i scored by the query at its position
    return scores, v, None if state is None else (state["m"], state["u"], state["w"])


def _finish(out, final, initial_state, n):
    before = initial_state.length if initial_state is not None else 0
    return out, RecurrentState(before + n, **dict(zip(NAMES, final)))


def _with_state(run):
    def form(q, k, v, *, causal, scale, initial_state=None, chunk_size=64):
        if not causal:
            raise ValueError("aaren is a causal (many-to-many) RNN; pass causal=True")
        scores, v_h, state = _prepare(q, k, v, scale, initial_state, chunk_size)
        out, final = run(scores, v_h, state, chunk_size)
        return _finish(out, final, initial_state, k.shape[2])

    form.__name__ = run.__name__
    return form


def prefix_weights(q, k, v, *, causal, mask, scale, chunk_size=64):
    """The ``(B, H, N, N)`` attention matrix: row ``t`` is the softmax of the scores ``s_0 .. s_t``."""
    scores, _, _ = _prepare(q, k, v, scale, None, chunk_size)
    N = scores.shape[-1]
    visible = torch.ones(N, N, dtype=torch.bool, device=scores.device).tril()
    return scores[..., None, :].expand(*scores.shape[:-1], N, N).masked_fill(~visible, float("-inf")).softmax(-1)


def combine(a, b):
    """The associative combine of two ``(m, u, w)`` summaries."""
    m = torch.maximum(a[0], b[0])
    ea, eb = (a[0] - m).exp(), (b[0] - m).exp()
    return m, a[1] * ea + b[1] * eb, a[2] * ea[..., None] + b[2] * eb[..., None]


def prefix_softmax(scores, v, state):
    """Materialised: row ``t`` is the softmax over tokens ``<= t`` (plus the initial state as one more term)."""
    N = scores.shape[-1]
    visible = torch.ones(N, N, dtype=torch.bool, device=scores.device).tril()
    rows = scores[..., None, :].expand(*scores.shape[:-1], N, N).masked_fill(~visible, float("-inf"))
    top = rows.amax(-1)  # running max M_t
    m_final = scores.amax(-1)
    if state is not None:
        top, m_final = torch.maximum(top, state[0][..., None]), torch.maximum(m_final, state[0])
    e = (rows - top[..., None]).exp()
    num, den = e @ v, e.sum(-1)
    last = (scores - m_final[..., None]).exp()
    u, w = last.sum(-1), (last[..., None] * v).sum(-2)
    if state is not None:
        carry, keep = (state[0][..., None] - top).exp(), (state[0] - m_final).exp()
        num, den = num + carry[..., None] * state[2][..., None, :], den + carry * state[1][..., None]
        u, w = u + keep * state[1], w + keep[..., None] * state[2]
    return num / den[..., None], (m_final, u, w)


def parallel(scores, v, state, chunk_size):
    return prefix_softmax(scores, v, state)


def chunked(scores, v, state, chunk_size):
    outs = []
    for s in range(0, scores.shape[-1], chunk_size):
        out, state = prefix_softmax(scores[..., s : s + chunk_size], v[..., s : s + chunk_size, :], state)
        outs.append(out)
    return torch.cat(outs, dim=-2), state


def scan(scores, v, state, chunk_size):
    """Hillis-Steele inclusive scan: ``ceil(log2 N)`` combine steps over all positions, then the initial state."""
    m, u, w = scores, torch.ones_like(scores), v
    offset = 1
    while offset < scores.shape[-1]:
        cm, cu, cw = combine((m[..., :-offset], u[..., :-offset], w[..., :-offset, :]),
                             (m[..., offset:], u[..., offset:], w[..., offset:, :]))
        m = torch.cat([m[..., :offset], cm], dim=-1)
        u = torch.cat([u[..., :offset], cu], dim=-1)
        w = torch.cat([w[..., :offset, :], cw], dim=-2)
        offset *= 2
    if state is not None:
        m, u, w = combine((state[0][..., None], state[1][..., None], state[2][..., None, :]), (m, u, w))
    return w / u[..., None], (m[..., -1], u[..., -1], w[..., -1, :])


def recurrent(scores, v, state, chunk_size):
    outs = []
    for t in range(scores.shape[-1]):
        token = (scores[..., t], torch.ones_like(scores[..., t]), v[..., t, :])
        state = token if state is None else combine(state, token)
        outs.append(state[2] / state[1][..., None])
    return torch.stack(outs, dim=-2), state


FORMS = {run.__name__: _with_state(run) for run in (parallel, chunked, scan, recurrent)}
