"""Exact attention over a tile layout through PyTorch's fused attention kernel.

A prefill estimator keeps, for every query block ``r`` of ``block`` queries, a
set of key blocks of the same size (a boolean tile layout ``(B, H, R, R)``).
This kernel runs such a layout as whole dense attention calls:

- the diagonal tiles of every row, in one causal call (``block x block`` each);
- the other kept tiles of a row, copied side by side (``block x W block``, no
  mask needed: they lie wholly in the row's past), one call per few rows of a
  group of rows that keep the same number ``W`` of them;
- the two partial results merged per query with the log-sum-exp rule.

A row whose kept past tiles lie in long runs of consecutive tiles (dense
layouts: XAttention and FlexPrefill on flat attention keep most tiles) is run
apart: one call per run, its keys and values read in place as one slab of the
sequence, no copy, the runs' and the diagonal's partials merged in one step.

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

from .grad_mode import records_graph
from .token_blocks import block_windows, last_block, whole_blocks


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
                        budget: int = 1 << 18, long_run: int = 4) -> torch.Tensor:
    """Causal self-attention of ``q (B, H, N, D)`` over ``k, v (B, Hkv, N, D/Dv)`` restricted to ``layout``
    (bool ``(B, H, R, R)``, ``R = ceil(N / block)``, tile ``(r, c)`` kept by query block ``r``).

    Tiles are copied with ``index_select`` from overlapping block views of the keys and values
    (:func:`~attnkit.kernels.token_blocks.block_windows`: a tile is one contiguous slab, read in place whatever
    ``N``), a few rows at a time: about ``budget`` numbers per copy, so the copies are consumed while they are
    still in the core's cache and the memory held stays small. A last, shorter block is padded on its own.
    Rows whose kept past tiles average at least ``long_run`` tiles per run of consecutive tiles read each run
    in place instead (:func:`_runs_in_place`)."""
    B, H, N, D = q.shape
    Hkv, Dv = k.shape[1], v.shape[3]
    R = layout.shape[-1]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # no-ops for the usual inputs; else one copy each
    kv_of = ((torch.arange(B, device=q.device)[:, None] * Hkv + torch.arange(H, device=q.device) // (H // Hkv))
             .reshape(B * H))
    r = torch.arange(R, device=q.device)
    diagonal = layout[..., r, r].reshape(B * H * R)
    o_d, l_d = _diagonal(q, k, v, kv_of, block=block, scale=scale)
    l_d = l_d.masked_fill(~diagonal[:, None], float("-inf"))
    past = (layout & (r[None, :] < r[:, None])).reshape(B * H * R, R)
    width = past.sum(-1)
    # without gradients each group's rows are written over their diagonal partials as soon as they are merged
    # (a group reads only its own rows): the output is the diagonal calls' buffer, no second one is held
    in_place = not records_graph(q, k, v)
    pieces, rows_of = [], []

    def emit(rows, piece):
        if in_place:
            o_d.index_copy_(0, rows, piece)
        else:
            pieces.append(piece)
            rows_of.append(rows)

    run_starts = past & ~F.pad(past, (1, 0))[:, :-1]  # where each maximal run of consecutive kept past tiles starts
    runs = run_starts.sum(-1)
    in_runs = (runs > 0) & (width >= long_run * runs)
    if bool(in_runs.any()):
        _runs_in_place(q, k, v, past, run_starts, in_runs.nonzero().squeeze(1), kv_of, o_d, l_d, emit, block=block,
                       scale=scale)
    windows = None
    for w in width[~in_runs].unique().tolist():
        rows = ((width == w) & ~in_runs).nonzero().squeeze(1)
        if w == 0:
            emit(rows, o_d[rows] * diagonal[rows, None, None])
            continue
        if windows is None:  # a kept past tile exists, so the sequence holds a whole block
            windows = tuple(block_windows(x, block) for x in (q, k, v))
        tiles = past[rows].nonzero()[:, 1].view(len(rows), w)  # each row's kept past tiles, in order
        starts = kv_of[rows // R, None] * N + tiles * block  # past tiles are whole blocks
        at, short = _query_starts(q, rows, R, block)
        step = max(1, budget // (w * block * (D + Dv)))
        listed = rows.tolist()
        for a in range(0, len(rows), step):
            part = rows[a:a + step]
            lo, hi = listed[a], listed[a + len(part) - 1] + 1
            # consecutive tile rows of whole blocks: their queries are read, and their outputs merged, in place
            span = slice(lo, hi) if in_place and N % block == 0 and hi - lo == len(part) else None
            queries = (q.view(-1, 1, block, D)[span] if span else
                       _query_tiles(q, windows[0], part, at[a:a + step], short, block))
            kg = windows[1].index_select(0, starts[a:a + step].flatten()).view(len(part), 1, w * block, D)
            vg = windows[2].index_select(0, starts[a:a + step].flatten()).view(len(part), 1, w * block, Dv)
            o, l = attention_with_lse(queries, kg, vg, causal=False, scale=scale)
            # the past partial's share of the row's softmax mass is sigmoid(l - l_d) (l is finite: keys exist)
            share = torch.sigmoid(l[:, 0] - l_d[span or part])[..., None]
            if span:
                o_d[span].lerp_(o[:, 0], share)
            else:
                emit(part, o_d[part].lerp_(o[:, 0], share))
    out = o_d if in_place else torch.cat(pieces)[torch.cat(rows_of).argsort()]
    return out.reshape(B, H, R * block, Dv)[:, :, :N]


def _runs_in_place(q, k, v, past, run_starts, rows, kv_of, o_d, l_d, emit, *, block, scale):
    """Tile rows ``rows`` (indices into ``B H R``), each attended run by run: one call per run of consecutive
    kept past tiles (``run_starts``: where each starts), its keys and values a slab of ``k``, ``v`` read in place;
    the runs' partials and the diagonal partial ``(o_d, l_d)`` of the row merged in one log-sum-exp step and
    passed to ``emit``."""
    B, H, N, D = q.shape
    R = past.shape[-1]
    kept = past[rows]
    last = kept & ~F.pad(kept, (0, 1))[:, 1:]
    starts, ends = run_starts[rows].nonzero(), last.nonzero()  # row-major: the i-th run of a row starts and ends in step
    runs_of = torch.bincount(starts[:, 0], minlength=len(rows)).tolist()
    bounds = torch.stack([starts[:, 1], ends[:, 1] + 1], -1).mul_(block).tolist()
    qs, ks, vs = q.view(B * H, N, D), k.view(-1, N, D), v.view(-1, N, v.shape[-1])
    done = 0
    for row, count in zip(rows.tolist(), runs_of):
        head, r = divmod(row, R)
        kv = int(kv_of[head])
        query = qs[head, r * block:(r + 1) * block][None, None]
        parts = [attention_with_lse(query, ks[kv, a:b][None, None], vs[kv, a:b][None, None], causal=False,
                                    scale=scale) for a, b in bounds[done:done + count]]
        done += count
        n = query.shape[2]  # fewer than block in a last, shorter block
        outs = torch.cat([o_d[row:row + 1, :n]] + [o[0] for o, _ in parts])  # (count + 1, n, Dv)
        lses = torch.cat([l_d[row:row + 1, :n]] + [l[0] for _, l in parts])  # (count + 1, n)
        total = torch.logsumexp(lses, 0)  # finite: the row keeps at least one run
        out = (outs * torch.exp(lses - total)[..., None]).sum(0)
        emit(torch.tensor([row], device=q.device), F.pad(out, (0, 0, 0, block - n))[None])


def _padded_last(x, block):
    """The last, shorter block of every head zero-padded to ``block`` tokens, ``(B * H, 1, block, D)``."""
    rest = last_block(x, block)
    return F.pad(rest, (0, 0, 0, block - rest.shape[2])).reshape(-1, 1, block, x.shape[-1])


def _diagonal(q, k, v, kv_of, *, block, scale):
    """The diagonal tiles in causal calls, ``(B H R, block, Dv)`` and their log-sum-exp ``(B H R, block)``:
    the whole blocks read in place, a last, shorter block zero-padded on its own (its real queries see only
    real keys under the causal rule). With a shorter last block and no gradients, the calls run one head at a
    time into the result, so the whole blocks' partials are never held twice."""
    B, H, N, _ = q.shape
    R = -(-N // block)
    same = k.shape[1] == H
    whole = [whole_blocks(x, block).flatten(0, 1) for x in (q, k, v)]  # (heads, R or R - 1, block, D)
    if N % block == 0:
        o, l = attention_with_lse(whole[0], whole[1] if same else whole[1][kv_of],
                                  whole[2] if same else whole[2][kv_of], causal=True, scale=scale)
        return o.reshape(-1, block, o.shape[-1]), l.reshape(-1, block)
    last = [_padded_last(x, block) for x in (q, k, v)]  # (heads, 1, block, D)
    if records_graph(q, k, v):
        parts = [(whole[0], whole[1], whole[2])] if R > 1 else []
        parts = [attention_with_lse(a, b if same else b[kv_of], c if same else c[kv_of], causal=True, scale=scale)
                 for a, b, c in parts + [tuple(last)]]
        o, l = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
        return o.reshape(-1, block, o.shape[-1]), l.reshape(-1, block)
    o = q.new_empty(B * H, R, block, v.shape[-1])
    l = q.new_empty(B * H, R, block)
    for h in range(B * H):
        r = h if same else int(kv_of[h])
        if R > 1:
            o[h:h + 1, :-1], l[h:h + 1, :-1] = attention_with_lse(whole[0][h:h + 1], whole[1][r:r + 1],
                                                                  whole[2][r:r + 1], causal=True, scale=scale)
        o[h:h + 1, -1:], l[h:h + 1, -1:] = attention_with_lse(last[0][h:h + 1], last[1][r:r + 1], last[2][r:r + 1],
                                                              causal=True, scale=scale)
    return o.reshape(-1, block, o.shape[-1]), l.reshape(-1, block)


def _query_starts(q, rows, R, block):
    """Where the query block of each tile row ``rows`` (indices into ``B H R``) starts in ``block_windows(q)``, and
    whether any of them is a last, shorter block (read at the last whole block's place, then replaced)."""
    N = q.shape[2]
    whole = N // block
    r = rows % R
    return (rows // R) * N + r.clamp(max=whole - 1) * block, N % block > 0 and bool((r == whole).any())


def _query_tiles(q, windows, rows, at, short, block):
    """The query blocks of tile rows ``rows`` starting at ``at`` (:func:`_query_starts`), ``(len(rows), 1, block,
    D)``; the rows of a last, shorter block (if ``short``) are read zero-padded (their extra outputs are dropped)."""
    out = windows.index_select(0, at).view(len(rows), 1, block, q.shape[-1])
    if short:
        R = -(-q.shape[2] // block)
        last = rows % R == R - 1
        out[last] = _padded_last(q, block)[rows[last] // R]
    return out
