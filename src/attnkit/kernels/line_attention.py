"""Exact attention over vertical and slash lines: the keys ``{j <= i : j in V or i - j in S}`` of every query.

Vertical lines are keys every query reads (``V``, per head); slash lines are
offsets ``S`` (query ``i`` reads key ``i - o``). Neither is block-aligned, so the
kernel attends exactly the kept positions, per chunk of ``block`` queries: the
vertical keys are gathered once (a dense ``block x |V|`` product, masked
causally); the slash lines are covered by the ``block``-aligned key tiles they
cross and masked element by element inside them (a key that is also vertical is
masked out of the tiles, so no pair counts twice); one softmax runs over both
parts. Scattered slashes make the cover dense; the local window (offsets
``0 .. w - 1``) costs about two tiles per chunk. Gradients flow through the
gathers (autograd keeps the covered scores: an inference kernel).

``v_valid`` (bool, like ``V``) marks the vertical slots in use when heads keep
different numbers of lines (distinct keys in the used slots).
"""
from __future__ import annotations

import torch

from .positions import repeat_kv


def _line_masks(V, S, N, v_valid):
    """Boolean ``(B, H, N)`` tables: is key j vertical, is offset o a slash."""
    shape = (*V.shape[:2], N + 1)
    vertical = torch.zeros(shape, dtype=torch.bool, device=V.device).scatter(-1, torch.where(v_valid, V, N), True)
    return vertical[..., :N], torch.zeros(shape, dtype=torch.bool, device=V.device).scatter(-1, S, True)[..., :N]


def _cover(S, N, block):
    """Per query chunk, the key tiles the slash lines cross: padded indices ``(B, H, R, W)`` and their validity."""
    R = -(-N // block)
    start = torch.arange(R, device=S.device) * block
    end = (start + block).clamp(max=N) - 1
    lo = start[:, None] - S[:, :, None, :]  # first key of each slash in each chunk (B, H, R, ns)
    hi = end[:, None] - S[:, :, None, :]
    seen = hi >= 0
    hit = torch.zeros(*S.shape[:2], R, R + 1, dtype=torch.bool, device=S.device)
    for edge in (lo.clamp(min=0) // block, hi.clamp(min=0) // block):
        hit.scatter_(-1, torch.where(seen, edge, R), True)
    hit = hit[..., :R]
    width = max(1, int(hit.sum(-1).max()))
    kept, order = hit.to(torch.int8).sort(dim=-1, descending=True, stable=True)
    return order[..., :width], kept[..., :width] > 0


def line_attention(q, k, v, V, S, *, scale: float, block: int, v_valid=None) -> torch.Tensor:
    """Causal softmax attention of ``q (B, H, N, D)`` over the lines ``V (B, H, nv)`` and ``S (B, H, ns)``."""
    B, H, N, D = q.shape
    if v_valid is None:
        v_valid = torch.ones_like(V, dtype=torch.bool)
    k, v = repeat_kv(k, H), repeat_kv(v, H)
    is_vertical, is_slash = _line_masks(V, S, N, v_valid)
    kv_v = k.gather(2, V[..., None].expand(-1, -1, -1, D)), v.gather(2, V[..., None].expand(-1, -1, -1, v.shape[-1]))
    tiles, tile_ok = _cover(S, N, block)
    R, W = tiles.shape[2], tiles.shape[3]
    pad = R * block - N
    kt = torch.nn.functional.pad(k, (0, 0, 0, pad)).reshape(B, H, R, block, D)
    vt = torch.nn.functional.pad(v, (0, 0, 0, pad)).reshape(B, H, R, block, v.shape[-1])
    bi, hi = torch.arange(B, device=q.device)[:, None, None], torch.arange(H, device=q.device)[None, :, None]
    t = torch.arange(block, device=q.device)
    outs = []
    for r in range(R):
        i = torch.arange(r * block, min(N, (r + 1) * block), device=q.device)
        qc = q[:, :, i]
        s_v = (qc @ kv_v[0].transpose(-1, -2)) * scale
        ok_v = (V[:, :, None, :] <= i[:, None]) & v_valid[:, :, None, :]
        j = (tiles[:, :, r, :, None] * block + t).reshape(B, H, 1, W * block)  # keys of the covering tiles
        diff = i[:, None] - j
        ok_t = (diff >= 0) & (j < N) & tile_ok[:, :, r].repeat_interleave(block, -1)[:, :, None]
        ok_t &= is_slash.gather(-1, diff.clamp(0, N - 1).flatten(2)).view_as(diff)
        ok_t &= ~is_vertical.gather(-1, j.clamp(max=N - 1).flatten(2)).view_as(j)
        k_r = kt[bi, hi, tiles[:, :, r]].flatten(2, 3)
        v_r = vt[bi, hi, tiles[:, :, r]].flatten(2, 3)
        s_t = (qc @ k_r.transpose(-1, -2)) * scale
        scores = torch.cat([s_v.masked_fill(~ok_v, float("-inf")), s_t.masked_fill(~ok_t, float("-inf"))], -1)
        p = torch.softmax(scores, -1).nan_to_num(0.0)
        nv = V.shape[-1]
        outs.append(p[..., :nv] @ kv_v[1] + p[..., nv:] @ v_r)
    return torch.cat(outs, dim=2)


def line_rows(V, S, rows: torch.Tensor, N: int, v_valid=None) -> torch.Tensor:
    """Bool ``(B, H, len(rows), N)``: the keys query rows ``rows`` read."""
    v_valid = torch.ones_like(V, dtype=torch.bool) if v_valid is None else v_valid
    is_vertical, is_slash = _line_masks(V, S, N, v_valid)
    diff = rows[:, None] - torch.arange(N, device=V.device)
    on_slash = is_slash.gather(-1, diff.clamp(0, N - 1).flatten()[None, None].expand(*S.shape[:2], -1))
    return (is_vertical[:, :, None, :] | on_slash.view(*S.shape[:2], *diff.shape)) & (diff >= 0)


def line_density(V, S, N: int, v_valid=None) -> float:
    """Attended pairs over the causal pairs: each line's pairs, minus those on a vertical and a slash line."""
    v_valid = torch.ones_like(V, dtype=torch.bool) if v_valid is None else v_valid
    both = ((V[..., :, None] + S[..., None, :] < N) & v_valid[..., :, None]).sum((-1, -2))
    pairs = ((N - V) * v_valid).sum(-1) + (N - S).sum(-1) - both
    return float(pairs.sum()) / (V.shape[0] * V.shape[1] * N * (N + 1) / 2)
