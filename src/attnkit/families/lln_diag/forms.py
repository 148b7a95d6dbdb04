"""LLN+Diag's stateful forms: parallel (the reference), chunked and recurrent (equations in the package docstring)."""
from __future__ import annotations


import torch

from ...state import RecurrentState, expect_state
from ...kernels.positions import repeat_kv
from ...reference import materialised_attention, materialised_weights
from .. import lln
from ...validation import check_int

LLN_FORMS = lln.SPEC.stateful_forms
PATTERNS = frozenset({"causal-self", "noncausal-self"})


def _start(q, k, v, initial_state, block):
    block = q.shape[-1] if block is None else block
    check_int("block", block)
    B, H, N, D = q.shape
    k, v = repeat_kv(k, H), repeat_kv(v, H)
    if k.shape[2] != N:
        raise ValueError(f"lln_diag is self-attention: q has {N} tokens, k has {k.shape[2]}")
    Dv = v.shape[-1]
    shapes = {"S": (B, H, D, Dv), "z": (B, H, D), "block_k": (B, H, block, D), "block_v": (B, H, block, Dv)}
    state = expect_state(initial_state, tuple(shapes), shapes, q)
    before = 0 if state is None else state.length
    filled = before % block
    lln_state = None if state is None else RecurrentState(before, S=state["S"], z=state["z"])
    cache_k = k.new_zeros(B, H, 0, D) if state is None else state["block_k"][:, :, :filled]
    cache_v = v.new_zeros(B, H, 0, Dv) if state is None else state["block_v"][:, :, :filled]
    return block, k, v, before, lln_state, cache_k, cache_v


def _combine(form, q, k, v, causal, scale, initial_state, alpha, beta, block, chunk_size, diagonal):
    block, k, v, before, lln_state, cache_k, cache_v = _start(q, k, v, initial_state, block)
    linear, linear_state = LLN_FORMS[form](q, k, v, causal=causal, scale=1.0, initial_state=lln_state,
                                           alpha=alpha, beta=beta, chunk_size=chunk_size)
    keys, values = torch.cat([cache_k, k], dim=2), torch.cat([cache_v, v], dim=2)
    first = before - cache_k.shape[2]  # stream position of keys[0]: the start of the current block
    local = diagonal(q, keys, values, first, before, causal, scale, block)
    length = before + q.shape[2]
    keep = length % block  # the unfinished block's rows, zero-padded to a fixed size
    pad = lambda t: torch.nn.functional.pad(t[:, :, t.shape[2] - keep:], (0, 0, 0, block - keep))  # noqa: E731
    state = RecurrentState(length, S=linear_state["S"], z=linear_state["z"], block_k=pad(keys), block_v=pad(values))
    return 0.5 * (linear + local), state


def _allowed(q_pos, k_pos, causal, block):
    same = (q_pos[:, None] // block) == (k_pos[None, :] // block)
    return same & (k_pos[None, :] <= q_pos[:, None]) if causal else same


def _materialised(q, keys, values, first, before, causal, scale, block):
    q_pos = torch.arange(before, before + q.shape[2], device=q.device)
    k_pos = torch.arange(first, first + keys.shape[2], device=q.device)
    return materialised_attention(q, keys, values, causal=False, mask=_allowed(q_pos, k_pos, causal, block),
                                  scale=scale)


def _per_block(q, keys, values, first, before, causal, scale, block):
    outs, end = [], before + q.shape[2]
    for start in range(first, end, block):  # first is a block start
        stop = min(start + block, end)
        rows = slice(max(start, before) - before, stop - before)
        cols = slice(start - first, min(start + block, first + keys.shape[2]) - first)
        outs.append(_materialised(q[:, :, rows], keys[:, :, cols], values[:, :, cols], start, max(start, before),
                                  causal, scale, block))
    return torch.cat(outs, dim=2)


def _token_by_token(q, keys, values, first, before, causal, scale, block):
    if not causal:
        return _per_block(q, keys, values, first, before, causal, scale, block)
    outs = []
    for t in range(q.shape[2]):
        pos = before + t
        lo = pos // block * block - first
        row = scale * q[:, :, t, None] @ keys[:, :, lo : pos - first + 1].transpose(-1, -2)
        outs.append(row.softmax(dim=-1) @ values[:, :, lo : pos - first + 1])
    return torch.cat(outs, dim=2)


def lln_diag_weights(q, k, v, *, causal, mask, scale, alpha=lln.DEFAULT_ALPHA, beta=lln.DEFAULT_BETA, block=None,
                     chunk_size=64):
    """The ``(B, H, N, N)`` attention matrix: the mean of LLN's implicit weights and the block-diagonal softmax."""
    block, k, v, _, _, _, _ = _start(q, k, v, None, block)
    linear = lln.SPEC.weights(q, k, v, causal=causal, mask=None, scale=1.0, alpha=alpha, beta=beta)
    pos = torch.arange(q.shape[2], device=q.device)
    local = materialised_weights(q, k, causal=False, mask=_allowed(pos, pos, causal, block), scale=scale)
    return 0.5 * (linear + local)


def _form(name, diagonal):
    def form(q, k, v, *, causal, scale, initial_state=None, alpha=lln.DEFAULT_ALPHA, beta=lln.DEFAULT_BETA,
             block=None, chunk_size=64):
        return _combine(name, q, k, v, causal, scale, initial_state, alpha, beta, block, chunk_size, diagonal)

    form.__name__ = name
    return form


FORMS = {"parallel": _form("parallel", _materialised), "chunked": _form("chunked", _per_block),
         "recurrent": _form("recurrent", _token_by_token)}
