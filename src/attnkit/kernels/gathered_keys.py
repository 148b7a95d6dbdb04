"""Exact softmax attention of each query over its own short list of key positions (decode-time selection).

Query-aware decode methods (Quest's pages, Loki's top-k keys) give every query a
few hundred or thousand cached keys to read. Gathering those keys per query and
attending them costs ``O(K d)`` per query and reads nothing else of the cache;
the gather indexes the kv head of each query head directly, so a GQA cache is
never repeated to the query heads.
"""
from __future__ import annotations

import torch


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x (B, Hkv, N, D)``, ``index (B, H, Nq, K)`` long in ``[0, N)`` -> ``(B, H, Nq, K, D)``; query head ``h``
    reads kv head ``h // (H // Hkv)``."""
    B, Hkv = x.shape[:2]
    H = index.shape[1]
    batch = torch.arange(B, device=x.device)[:, None, None, None]
    head = (torch.arange(H, device=x.device) // (H // Hkv))[None, :, None, None]
    return x[batch, head, index]  # advanced indexing reads only the chosen rows (x may be a view of a larger buffer)


def gathered_attention(q, k, v, index: torch.Tensor, valid: torch.Tensor, *, scale: float,
                       budget: int = 1 << 22) -> torch.Tensor:
    """``softmax(q . k[index] * scale)`` over the ``valid`` slots, ``(B, H, Nq, Dv)``; a query with no valid slot
    outputs zeros. Queries run in chunks of about ``budget`` gathered numbers."""
    B, H, Nq, D = q.shape
    K = index.shape[-1]
    rows = max(1, budget // max(1, B * H * K * D))
    outs = []
    for c0 in range(0, Nq, rows):
        c1 = min(Nq, c0 + rows)
        kg, vg = gather_rows(k, index[:, :, c0:c1]), gather_rows(v, index[:, :, c0:c1])
        s = (q[:, :, c0:c1, None, :] @ kg.transpose(-1, -2)).squeeze(-2) * scale
        p = torch.softmax(s.masked_fill(~valid[:, :, c0:c1], float("-inf")), -1).nan_to_num(0.0)
        outs.append((p[..., None, :] @ vg).squeeze(-2))
    return torch.cat(outs, dim=2)


def paged_attention(q, k, v, pages: torch.Tensor, valid: torch.Tensor, *, page: int, scale: float) -> torch.Tensor:
    """Each query attends its chosen pages ``(B, H, Nq, K)`` of ``page`` keys (causal inside), reading whole pages.

    Complete pages are gathered as ``page x D`` blocks (a view of the cache, no copy of it); the last, partial page
    (if any) is read directly by every query whose position reaches it. Slots naming the partial page are its.
    """
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    n = Nk // page
    pos = (torch.arange(Nq, device=q.device) + Nk - Nq)[:, None]
    batch = torch.arange(B, device=q.device)[:, None, None, None]
    head = (torch.arange(H, device=q.device) // (H // k.shape[1]))[None, :, None, None]
    parts_s, parts_v = [], []
    if n:
        whole = pages.clamp(max=n - 1)
        kg = k[:, :, : n * page].unflatten(2, (n, page))[batch, head, whole].flatten(3, 4)  # (B, H, Nq, K page, D)
        vg = v[:, :, : n * page].unflatten(2, (n, page))[batch, head, whole].flatten(3, 4)
        tokens = (whole[..., None] * page + torch.arange(page, device=q.device)).flatten(-2)
        ok = (valid & (pages < n)).repeat_interleave(page, -1) & (tokens <= pos)
        s = (q[:, :, :, None, :] @ kg.transpose(-1, -2)).squeeze(-2) * scale
        parts_s.append(s.masked_fill(~ok, float("-inf")))
        parts_v.append(vg)
    if Nk > n * page:
        kt, vt = k[:, :, n * page:], v[:, :, n * page:]
        group = H // k.shape[1]
        s = (q.unflatten(1, (k.shape[1], group)) @ kt[:, :, None].transpose(-1, -2)).flatten(1, 2) * scale
        ok = torch.arange(n * page, Nk, device=q.device) <= pos
        parts_s.append(s.masked_fill(~ok, float("-inf")))
        parts_v.append(vt[:, :, None, None].expand(-1, -1, group, Nq, -1, -1).flatten(1, 2))
    p = torch.softmax(torch.cat(parts_s, -1), -1).nan_to_num(0.0)
    out, start = 0, 0
    for s, vals in zip(parts_s, parts_v):
        width = s.shape[-1]
        out = out + (p[..., None, start:start + width] @ vals).squeeze(-2)
        start += width
    return out
