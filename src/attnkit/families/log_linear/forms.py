"""Log-linear attention over a gated (Mamba-2 style) linear recurrence: three forms.

Guo, Yang, Goel, Xing, Dao & Kim, "Log-Linear Attention" (2025). The past of
query ``t`` is cut into Fenwick-tree buckets: key ``s`` is at level
``l(t, s) = bit_length(t XOR s)`` (0 for ``s = t``; level ``l >= 1`` holds the
``2^(l-1)`` tokens just before ``t``'s own aligned block of that size), and each
level has its own data-dependent weight ``lam[t, l] >= 0``::

    o_t = sum_{s <= t} lam[t, l(t, s)] exp(b_t - b_s) (q_t . k_s) v_s,   b_t = g_1 + ... + g_t

so the state is one ``Dk x Dv`` matrix per level: O(log N) of them. Positions are
absolute (a piece continuing a state starts at ``state.length``); ``lam`` has one
column per level, enough for every position seen. All forms return
``(out, S)`` with ``S (B, H, levels, Dk, Dv)`` the per-level states relative to the
last token: ``log_linear_parallel`` (materialised ``N x N`` matrix, the reference),
``log_linear_recurrent`` (Fenwick merges token by token) and ``log_linear_chunked``
(materialised inside aligned chunks, Fenwick merges between them).
"""
from __future__ import annotations

import torch


def levels_between(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``bit_length(t XOR s)`` elementwise for int64 tensors."""
    x = torch.bitwise_xor(t, s)
    return torch.where(x > 0, torch.floor(torch.log2(x.clamp(min=1).double())).long() + 1, torch.zeros_like(x))


def carried_levels(pos: torch.Tensor, before: torch.Tensor, levels: int) -> torch.Tensor:
    """Level seen from each query position ``pos`` of each bucket ``0 .. levels - 1`` of a state taken
    at position ``before`` (broadcast against ``pos``): ``max(l, l(pos, before))``, shape ``(*pos.shape, levels)``."""
    return torch.maximum(torch.arange(levels, device=pos.device), levels_between(pos, before)[..., None])


def pair_weights(lam: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``lam[t, l(t, s)]`` for the query and key positions ``pos (..., r)`` of ``lam (B, H, ..., r, levels)``."""
    level = levels_between(pos[..., :, None], pos[..., None, :])
    return torch.gather(lam, -1, level.expand(*lam.shape[:-1], level.shape[-1]))


def level_one_hot(pos: torch.Tensor, end, levels: int) -> torch.Tensor:
    """One-hot ``(..., r, levels)`` of each position's level seen from position ``end``."""
    return torch.nn.functional.one_hot(levels_between(end, pos), levels)


def block_weights(q, k, g, lam, pos):
    """``Q K^T * H`` of the tokens at positions ``pos`` among themselves, ``H_ts = lam[t, l(t, s)] exp(b_t - b_s)``
    for ``s <= t`` (zero above the diagonal): the matrix that multiplies their values."""
    b = g.cumsum(-1)
    causal = pos[:, None] >= pos[None, :]
    decay = (b[..., :, None] - b[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    return (q @ k.transpose(-1, -2)) * pair_weights(lam, pos) * decay


def _block(q, k, v, g, lam, pos):
    """Tokens at positions ``pos`` among themselves: ``(Q K^T * H) V`` and their per-level state at the last one."""
    b = g.cumsum(-1)
    out = block_weights(q, k, g, lam, pos) @ v
    at_end = level_one_hot(pos, pos[-1:], lam.shape[-1]).to(q.dtype)
    S = torch.einsum("bhsl,bhsd,bhse->bhlde", at_end * (b[..., -1:] - b).exp()[..., None], k, v)
    return out, S


def log_linear_parallel(q, k, v, g, lam, *, start, S0):
    """Reference: ``O = (Q K^T * H) V`` with ``H_ts = lam[t, l(t, s)] exp(b_t - b_s)``, plus the initial state.

    An old token in bucket ``l0`` of the initial state (relative to ``start - 1``) is at
    level ``max(l0, bit_length(t XOR (start - 1)))`` for a query ``t``.
    """
    N, Lv = k.shape[2], lam.shape[-1]
    pos = torch.arange(start, start + N, device=q.device)
    out, S = _block(q, k, v, g, lam, pos)
    if S0 is None:
        return out, S
    decay = g.cumsum(-1).exp()  # from start - 1 to each query
    level = carried_levels(pos, torch.tensor(start - 1), Lv)  # (N, Lv)
    weights = torch.gather(lam, -1, level.expand(*lam.shape[:2], N, Lv)) * decay[..., None]
    out = out + torch.einsum("bhtl,bhtd,bhlde->bhte", weights, q, S0)
    moved = torch.nn.functional.one_hot(level[-1], Lv).to(q.dtype)  # old level -> level at the last token
    S = S + decay[..., -1, None, None, None] * torch.einsum("lm,bhlde->bhmde", moved, S0)
    return out, S


def fold(S: torch.Tensor, top: int) -> torch.Tensor:
    """Levels ``<= top`` of ``S (B, H, levels, Dk, Dv)`` summed into level ``top``; the ones below emptied."""
    merged = S[:, :, : top + 1].sum(dim=2, keepdim=True)
    return torch.cat([torch.zeros_like(S[:, :, :top]), merged, S[:, :, top + 1 :]], dim=2)


def advance(S: torch.Tensor, p: int, g_p: torch.Tensor) -> torch.Tensor:
    """The Fenwick merge before token ``p`` joins: levels ``< l*`` fold into ``l* = bit_length(p XOR (p-1))``; decay."""
    return fold(S, (p ^ (p - 1)).bit_length()) * g_p.exp()[..., None, None, None]


def log_linear_recurrent(q, k, v, g, lam, *, start, S0):
    """Token by token: merge, put ``k_t v_t^T`` at level 0, read ``o_t = sum_l lam_l q_t^T S_l``."""
    B, H, N, Dk = k.shape
    S = S0 if S0 is not None else k.new_zeros(B, H, lam.shape[-1], Dk, v.shape[-1])
    outs = []
    for t in range(N):
        p = start + t
        if p > 0:
            S = advance(S, p, g[:, :, t])
        kv = k[:, :, t, :, None] * v[:, :, t, None, :]
        S = torch.cat([kv[:, :, None], S[:, :, 1:]], dim=2)
        outs.append(torch.einsum("bhl,bhd,bhlde->bhe", lam[:, :, t], q[:, :, t], S))
    return torch.stack(outs, dim=2), S


def log_linear_chunked(q, k, v, g, lam, *, start, S0, chunk_size):
    """Tokens up to the next multiple of ``chunk_size`` go token by token; then, per aligned chunk,
    the merged state of everything before it (levels above the chunk's) is read in one matmul
    and the chunk itself is a materialised ``C x C`` block."""
    B, H, N, Dk = k.shape
    lead = min(-start % chunk_size, N)
    S = S0 if S0 is not None else k.new_zeros(B, H, lam.shape[-1], Dk, v.shape[-1])
    outs = []
    starts = range(lead, N, chunk_size)
    # split, not slicing in the loop: each slice's backward would zero-fill a full-length gradient
    first, *chunks = zip(*(x.split([lead, *(min(chunk_size, N - a) for a in starts)], dim=2)
                           for x in (q, k, v, g, lam)))
    if lead:
        out, S = log_linear_recurrent(*first, start=start, S0=S)
        outs.append(out)
    for a, pieces in zip(starts, chunks):
        out, S = _chunk(*pieces, start + a, S)
        outs.append(out)
    return torch.cat(outs, dim=2), S


def _chunk(q, k, v, g, lam, p, S):
    """One chunk starting at an aligned position ``p``: all its levels lie below the merged state's."""
    if p > 0:
        S = advance(S, p, g[:, :, 0])
    B, H, r, Dk = q.shape
    b = g.cumsum(-1) - g[..., :1]  # log decay from position p
    read = (lam[..., :, None] * q[..., None, :] * b.exp()[..., None, None]).reshape(B, H, r, -1)
    inner, S_block = _block(q, k, v, g, lam, torch.arange(p, p + r, device=q.device))
    out = read @ S.reshape(B, H, -1, S.shape[-1]) + inner
    return out, S * b[..., -1].exp()[..., None, None, None] + S_block
