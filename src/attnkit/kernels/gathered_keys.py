"""Exact softmax attention of each query over its own short list of cached pages (decode-time selection).

Query-aware decode methods (Quest's pages, Loki's and Adamas's top-k keys)
give every query a few hundred or thousand cached keys to read. This kernel
reads those and nothing else of the cache: per query head, its kv head's rows
are viewed as pages (``page x d`` numbers each, one contiguous slab of the
cache), the chosen pages are copied side by side with ``index_select`` into a
scratch block small enough to stay in the core's cache (a few queries at a
time), and the scores, the softmax and the weighted sum of values run on that
block. A GQA cache is never repeated to the query heads. A chosen key is
copied once per query head that reads it, the bound of any method that gathers.

Keys are ``page``-token pages of the cache (``page = 1``: single keys). Pages
past the last complete one are never gathered: the tokens of the last, partial
page are read in place by every query that names that page. A query reads the
keys of its valid slots up to its own position (bottom-right causal rule); a
query with nothing to read outputs zeros.
"""
from __future__ import annotations

import torch


def paged_attention(q, k, v, pages: torch.Tensor, valid: torch.Tensor, *, page: int, scale: float,
                    budget: int = 1 << 18) -> torch.Tensor:
    """``softmax(q . k[chosen] * scale) v[chosen]``, ``(B, H, Nq, Dv)``: each query ``(B, H, Nq, D)`` reads the
    pages ``pages (B, H, Nq, K)`` of ``page`` keys where ``valid``; query head ``h`` reads kv head
    ``h // (H // Hkv)`` of ``k, v (B, Hkv, Nk, D / Dv)``. Queries run a few at a time, gathering about ``budget``
    numbers each time."""
    B, H, Nq, D = q.shape
    Hkv, Nk, Dv = k.shape[1], k.shape[2], v.shape[3]
    group, slots, n = H // Hkv, pages.shape[-1], Nk // page
    rows = max(1, budget // max(1, slots * page * max(D, Dv)))
    qs = q * scale
    pieces = [_chunk(qs, k, v, pages[:, :, c0:c0 + rows], valid[:, :, c0:c0 + rows], c0, page=page)
              for c0 in range(0, Nq, rows)]
    return torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0]


def _chunk(qs, k, v, pages, valid, c0: int, *, page: int) -> torch.Tensor:
    """Queries ``c0 .. c0 + c`` of the scaled queries ``qs``, whose pages are ``pages (B, H, c, K)``."""
    B, H, Nq, D = qs.shape
    Hkv, Nk, Dv = k.shape[1], k.shape[2], v.shape[3]
    c, slots, n = pages.shape[2], pages.shape[3], Nk // page
    never = torch.finfo(qs.dtype).min  # a finite "minus infinity" written over a dropped key's score (even a NaN
    # one): a row with nothing to read stays free of NaN, forward and backward
    pos = torch.arange(Nk - Nq + c0, Nk - Nq + c0 + c, device=qs.device)[:, None]
    tokens = pages[..., None] * page + torch.arange(page, device=qs.device)
    drop = ~((valid & (pages < n))[..., None] & (tokens <= pos[..., None])).flatten(-2)  # (B, H, c, K page)
    whole = pages.clamp(max=max(n - 1, 0))
    tail = torch.arange(n * page, Nk, device=qs.device)  # the partial page's tokens, read in place
    drop_tail = ~((valid & (pages == n)).any(-1, keepdim=True) & (tail <= pos))  # (B, H, c, T)
    group, width = H // Hkv, slots * page if n else 0
    outs = []
    for b in range(B):
        for h in range(H):
            kh, vh = k[b, h // group], v[b, h // group]
            qc = qs[b, h, c0:c0 + c]
            parts = []
            if n:
                chosen = whole[b, h].flatten()
                kg = kh[: n * page].reshape(n, page * D).index_select(0, chosen).view(c, width, D)
                parts.append(torch.bmm(kg, qc[:, :, None]).squeeze(-1).masked_fill_(drop[b, h], never))
            if len(tail):
                parts.append((qc @ kh[n * page:].T).masked_fill_(drop_tail[b, h], never))
            p = torch.softmax(torch.cat(parts, -1) if len(parts) > 1 else parts[0], -1)
            out = None
            if n:
                vg = vh[: n * page].reshape(n, page * Dv).index_select(0, chosen).view(c, width, Dv)
                out = torch.bmm(p[:, None, :width], vg).squeeze(1)
            if len(tail):
                out = p[:, width:] @ vh[n * page:] if out is None else torch.addmm(out, p[:, width:], vh[n * page:])
            outs.append(out)
    out = torch.stack(outs).view(B, H, c, Dv)
    empty = drop.all(-1) & drop_tail.all(-1)
    return out.masked_fill(empty[..., None], 0.0)


def gathered_attention(q, k, v, index: torch.Tensor, valid: torch.Tensor, *, scale: float) -> torch.Tensor:
    """``softmax(q . k[index] * scale) v[index]`` over the ``valid`` slots of ``index (B, H, Nq, K)`` (key
    positions, each at most its query's position), ``(B, H, Nq, Dv)``: :func:`paged_attention` with pages of one key."""
    return paged_attention(q, k, v, index, valid, page=1, scale=scale)
