"""Exact attention over a tile layout through PyTorch's fused attention kernel.

A prefill estimator keeps, for every query block ``r`` of ``block`` queries, a
set of key blocks of the same size (a boolean tile layout ``(B, H, R, R)``).
This kernel runs such a layout as whole dense attention calls:

- the diagonal tiles of every row, in one causal call (``block x block`` each);
- the other kept tiles of a row, copied side by side (``block x W block``, no
  mask needed: they lie wholly in the row's past), one call per few rows of a
  group of rows that keep the same number ``W`` of them;
- the two partial results merged per query with the log-sum-exp rule.

The calls are ``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu``
on CPU (it returns the log-sum-exp the merge needs), so every (query, key)
pair costs what it costs dense SDPA; gathers copy ``1 / block`` of the work.
The result equals softmax attention over the kept tiles with the causal rule
inside them; a row that keeps nothing outputs zeros. The fused kernel's
log-sum-exp carries no gradient, so a call that needs gradients (and any call
off the CPU) runs the same steps through plain ``torch`` math, which autograd
follows (it saves every kept score for the backward: an inference kernel; the
``selected_blocks`` form recomputes instead); the result does not depend on the path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .online_softmax import merge_normalised


def attention_with_lse(q, k, v, *, causal: bool, scale: float):
    """``(out, lse)`` of softmax attention, batched over the leading dims ``(n, m, L, D)``."""
    grads = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if q.device.type == "cpu" and not grads:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
        return out, lse.reshape(out.shape[:-1])
    s = (q @ k.transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    lse = torch.logsumexp(s, -1)
    return torch.softmax(s, -1) @ v, lse


def tile_rows_attention(q, k, v, layout: torch.Tensor, *, block: int, scale: float,
                        budget: int = 1 << 18) -> torch.Tensor:
    """Causal self-attention of ``q (B, H, N, D)`` over ``k, v (B, Hkv, N, D/Dv)`` restricted to ``layout``
    (bool ``(B, H, R, R)``, ``R = ceil(N / block)``, tile ``(r, c)`` kept by query block ``r``).

    Tiles are copied with ``index_select`` from the ``(tiles, block x D)`` view of the keys and values (a tile is
    one contiguous slab), a few rows at a time: about ``budget`` numbers per copy, so the copies are consumed
    while they are still in the core's cache and the memory held stays small."""
    B, H, N, D = q.shape
    Hkv, Dv = k.shape[1], v.shape[3]
    R = layout.shape[-1]
    pad = R * block - N
    qt, kt, vt = ((F.pad(x, (0, 0, 0, pad)) if pad else x).reshape(-1, R, block, x.shape[-1]) for x in (q, k, v))
    k_tiles, v_tiles = kt.reshape(-1, block * D), vt.reshape(-1, block * Dv)  # tile (kv head, c) is row kv head R + c
    kv_of = ((torch.arange(B, device=q.device)[:, None] * Hkv + torch.arange(H, device=q.device) // (H // Hkv))
             .reshape(B * H))
    r = torch.arange(R, device=q.device)
    diagonal = layout[..., r, r].reshape(B * H * R)
    kd, vd = (kt, vt) if H == Hkv else (kt[kv_of], vt[kv_of])
    o_d, l_d = attention_with_lse(qt, kd, vd, causal=True, scale=scale)
    o_d, l_d = o_d.reshape(B * H * R, block, Dv), l_d.reshape(B * H * R, block)
    l_d = l_d.masked_fill(~diagonal[:, None], float("-inf"))
    past = (layout & (r[None, :] < r[:, None])).reshape(B * H * R, R)
    width = past.sum(-1)
    q_rows = qt.reshape(B * H * R, 1, block, D)
    pieces, rows_of = [], []
    for w in width.unique().tolist():
        rows = (width == w).nonzero().squeeze(1)
        if w == 0:
            pieces.append(o_d[rows] * diagonal[rows, None, None])
            rows_of.append(rows)
            continue
        for part in rows.split(max(1, budget // (w * block * (D + Dv)))):
            tiles = past[part].nonzero()[:, 1].view(len(part), w)  # each row's kept past tiles, in order
            flat = (kv_of[part // R, None] * R + tiles).flatten()
            kg = k_tiles.index_select(0, flat).view(len(part), 1, w * block, D)
            vg = v_tiles.index_select(0, flat).view(len(part), 1, w * block, Dv)
            o, l = attention_with_lse(q_rows[part], kg, vg, causal=False, scale=scale)
            pieces.append(merge_normalised(o[:, 0], l[:, 0], o_d[part], l_d[part])[0])
            rows_of.append(part)
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        out = torch.cat(pieces)[torch.cat(rows_of).argsort()]
    else:  # write each group in place: no concatenated copy
        out = o_d.new_empty(B * H * R, block, Dv)
        for rows, piece in zip(rows_of, pieces):
            out.index_copy_(0, rows, piece)
    return out.reshape(B, H, R * block, Dv)[:, :, :N]
