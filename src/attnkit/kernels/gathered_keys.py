"""Exact softmax attention of each query over its own short list of cached pages (decode-time selection).

Query-aware decode methods (Quest's pages, Loki's and Adamas's top-k keys)
give every query a few hundred or thousand cached keys to read. This kernel
reads those and nothing else of the cache, for every query head at once, in a
fixed number of torch calls (no loop over heads or pages):

- the keys and values are read as rows of the memory they live in (a KV cache's
  growing buffer is read in place, never copied), so one index addresses the
  ``t``-th key of any batch row and kv head;
- the chosen keys of all query heads are copied side by side with one
  ``index_select`` and scored with one batched product;
- the values are never copied: ``F.embedding_bag`` sums each query's chosen value
  rows weighted by its softmax, reading them where they are.

A decode step (one query per head, no gradient, on the CPU) has a form that
copies nothing: :func:`decode_page_attention` (Quest's distinct complete pages
plus its current page) and :func:`decode_key_attention` (Loki's distinct keys)
score the chosen keys in place with ``torch.sparse.sampled_addmm`` (each query's
key rows as one row of a sparse pattern handed over unchecked: PyTorch's CPU
kernel computes one dot product per entry, so the rows need no order).

A GQA cache is never repeated to the query heads (a query head's index points into
its kv head's rows); a chosen key is copied once per query head that reads it.

Keys are ``page``-token pages of the cache (``page = 1``: single keys), pages
numbered from 0 up to the last, partial one. A query reads the keys of its valid
slots up to its own position (bottom-right causal rule); a query with nothing to
read outputs zeros.
"""
from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F

from .grad_mode import records_graph


def token_rows(x: torch.Tensor, heads: int) -> tuple[torch.Tensor, tuple[tuple[int, ...], ...]]:
    """``x (B, Hx, N, E)`` as rows of the memory it lives in: ``rows (R, E)`` and ``first[b][h]``, the row of
    token 0 of query head ``h``'s kv head ``h // (heads / Hx)``: ``x[b, h // g, t] == rows[first[b][h] + t]``.
    A tensor whose tokens are not whole rows of that memory (a transposed view) is made contiguous first."""
    B, Hx, N, E = x.shape
    sb, sh, st, se = (s if size > 1 else 0 for s, size in zip(x.stride(), x.shape))
    if (N > 1 and st != E) or (E > 1 and se != 1) or sb % E or sh % E:
        x = x.contiguous()
        sb, sh = (s if size > 1 else 0 for s, size in zip(x.stride()[:2], x.shape[:2]))
    rows = x.as_strided(((B - 1) * sb // E + (Hx - 1) * sh // E + N, E), (E, 1))
    return rows, _first_rows(B, Hx, sb // E, sh // E, heads)


@functools.lru_cache(maxsize=256)
def _first_rows(B: int, Hx: int, batch_rows: int, head_rows: int, heads: int) -> tuple[tuple[int, ...], ...]:
    """Row of token 0 of each batch row and query head, for kv heads ``head_rows`` rows apart (made once per layout)."""
    group = heads // Hx
    return tuple(tuple(b * batch_rows + h // group * head_rows for h in range(heads)) for b in range(B))


def paged_attention(q, k, v, pages: torch.Tensor, valid: torch.Tensor, *, page: int, scale: float,
                    budget: int = 1 << 20) -> torch.Tensor:
    """``softmax(q . k[chosen] * scale) v[chosen]``, ``(B, H, Nq, Dv)``: each query ``(B, H, Nq, D)`` reads the
    pages ``pages (B, H, Nq, K)`` of ``page`` keys where ``valid``; query head ``h`` reads kv head
    ``h // (H // Hkv)`` of ``k, v (B, Hkv, Nk, D / Dv)``. Queries run a few at a time, copying about ``budget``
    numbers of keys each time (a decode step: all at once)."""
    B, H, Nq, D = q.shape
    k_rows, k_first = token_rows(k, H)
    v_rows, v_first = token_rows(v, H)
    firsts = torch.tensor([k_first] if k_first == v_first else [k_first, v_first], device=q.device)[..., None, None]
    qs = q * scale
    chunk = max(1, budget // max(1, B * H * pages.shape[-1] * page * D))
    pieces = [_queries_attention(qs[:, :, c0:c0 + chunk], k_rows, v_rows, firsts, pages[:, :, c0:c0 + chunk],
                                 valid[:, :, c0:c0 + chunk], c0, page=page, kv_len=k.shape[2], q_len=Nq)
              for c0 in range(0, Nq, chunk)]
    return torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0]


def _queries_attention(qs, k_rows, v_rows, firsts, pages, valid, c0: int, *, page: int, kv_len: int, q_len: int):
    """Scaled queries ``qs (B, H, c, D)``, queries ``c0 ..`` of the call, over their pages: ``(B, H, c, Dv)``.
    ``firsts (1 or 2, B, H, 1, 1)``: the row of each query head's first key, and value if they differ."""
    B, H, c, D = qs.shape
    tokens = pages if page == 1 else (pages[..., None] * page + torch.arange(page, device=qs.device)).flatten(-2)
    named = valid if page == 1 else valid.repeat_interleave(page, -1)
    pos = torch.arange(kv_len - q_len + c0, kv_len - q_len + c0 + c, device=qs.device)[:, None]
    drop = (~named | (tokens > pos)).flatten(0, 2)  # (B H c, K page)
    index = (tokens.clamp(max=kv_len - 1) + firsts).flatten(1, 3)  # a dropped slot points at a real key
    W = index.shape[-1]
    keys = k_rows.index_select(0, index[0].flatten()).view(-1, W, D)
    never = torch.finfo(qs.dtype).min  # a finite "minus infinity" written over a dropped key's score (even a NaN
    # one): a row with nothing to read stays free of NaN, forward and backward
    scores = torch.bmm(qs.reshape(-1, 1, D), keys.transpose(1, 2)).view(-1, W).masked_fill_(drop, never)
    out = F.embedding_bag(index[-1], v_rows, mode="sum", per_sample_weights=torch.softmax(scores, -1))
    return out.masked_fill(drop.all(-1, keepdim=True), 0.0).view(B, H, c, -1)


def gathered_attention(q, k, v, index: torch.Tensor, valid: torch.Tensor, *, scale: float) -> torch.Tensor:
    """``softmax(q . k[index] * scale) v[index]`` over the ``valid`` slots of ``index (B, H, Nq, K)`` (key
    positions, each at most its query's position), ``(B, H, Nq, Dv)``: :func:`paged_attention` with pages of one key."""
    return paged_attention(q, k, v, index, valid, page=1, scale=scale)


def reads_in_place(q, k, v) -> bool:
    """Whether :func:`decode_page_attention` can take this call: on the CPU, in float32 or float64 (the dtypes
    of PyTorch's sampled product there), without gradients."""
    graded = records_graph(q, k, v)
    return q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64) and not graded


def decode_page_attention(q, k, v, past: torch.Tensor, *, page: int, scale: float) -> torch.Tensor:
    """One query per head at the end of the cache, ``q (B, H, 1, D)``: softmax over the keys of the distinct
    complete pages ``past (B, H, P)`` and of its current page (keys ``page ((N - 1) // page)`` to ``N - 1``),
    ``(B, H, 1, Dv)``. Nothing is copied: the scores are a product sampled at the chosen key rows, the values are
    summed in place by ``embedding_bag``.

    Every query reads its ``P`` past pages in any order, then the written keys of its current page, so each query
    reads the same number of keys and the sparse pattern's row starts depend only on that number."""
    H, N, P = q.shape[1], k.shape[2], past.shape[-1]
    current = (N - 1) // page * page  # the current page's first key
    if current < P * page:
        raise ValueError(f"k holds {N} tokens: fewer complete pages before the last token than the {P} past pages "
                         f"of {page} tokens that decode_page_attention reads")
    k_rows, v_rows, firsts = _rows_in_place(k, v, H)
    dtype = _index_dtype(k_rows, v_rows)
    first_page = _first_page_rows(firsts, page, dtype, q.device)  # (1 or 2, B, H, 1, page)
    # each row of the index: the past pages' rows, then the current page's written rows, each written in place
    index = torch.empty(*first_page.shape[:3], P * page + N - current, dtype=dtype, device=q.device)
    torch.add(first_page, past.to(dtype).unsqueeze(-1), alpha=page, out=index[..., :P * page].unflatten(-1, (P, page)))
    torch.add(_first_written_rows(firsts, page, N - current, dtype, q.device), current, out=index[..., P * page:])
    return _attend_index(q, k_rows, v_rows, *_key_and_value_rows(index), scale)


def decode_key_attention(q, k, v, chosen: torch.Tensor, *, scale: float) -> torch.Tensor:
    """One query per head at the end of the cache, ``q (B, H, 1, D)``: softmax over the distinct keys at positions
    ``chosen (B, H, K)`` (``K`` at most the cache's length), ``(B, H, 1, Dv)``, read in place as
    :func:`decode_page_attention` reads its pages."""
    if chosen.shape != (*q.shape[:2], chosen.shape[-1]) or chosen.shape[-1] > k.shape[2]:
        raise ValueError(f"chosen must be (B, H, K) = ({q.shape[0]}, {q.shape[1]}, K) with K at most the cache's "
                         f"{k.shape[2]} tokens, got {tuple(chosen.shape)}")
    k_rows, v_rows, firsts = _rows_in_place(k, v, q.shape[1])
    first = _first_rows_tensor(firsts, _index_dtype(k_rows, v_rows), q.device)
    index = chosen.to(first.dtype) + first[..., None]
    return _attend_index(q, k_rows, v_rows, *_key_and_value_rows(index), scale)


def _rows_in_place(k, v, heads: int):
    """``k`` and ``v`` as rows (:func:`token_rows`) and their first rows: one table, or two when they differ."""
    k_rows, k_first = token_rows(k, heads)
    v_rows, v_first = token_rows(v, heads)
    return k_rows, v_rows, (k_first,) if k_first == v_first else (k_first, v_first)


def _index_dtype(*rows: torch.Tensor) -> torch.dtype:
    """int32 row numbers when every row fits (PyTorch's sampled product and ``embedding_bag`` read them faster
    than int64: 18% and 19% at 16k tokens), else int64."""
    return torch.int32 if max(r.shape[0] for r in rows) < 2 ** 31 else torch.int64


def _key_and_value_rows(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The key rows and the value rows of ``index (1 or 2, B, H, W)``, flat: one tensor twice when keys and values
    share their rows."""
    if index.shape[0] == 1:
        rows = index.reshape(-1)
        return rows, rows
    rows = index.reshape(2, -1)
    return rows[0], rows[1]


def _attend_index(q, k_rows, v_rows, key_index, value_index, scale: float) -> torch.Tensor:
    """Softmax attention of ``q (B, H, 1, D)`` over the distinct key rows ``key_index`` (``B H`` runs of ``W``
    rows, one per query head), ``(B, H, 1, Dv)``: keys scored by the sampled product, values (rows ``value_index``)
    summed by ``embedding_bag``, both where they are."""
    B, H, _, D = q.shape
    R = B * H
    W = key_index.shape[0] // R
    row_starts = _row_starts(R, W, key_index.dtype, q.device)
    scores = torch.zeros(R * W, dtype=q.dtype, device=q.device)
    chosen = _csr(row_starts, key_index, scores, (R, k_rows.shape[0]))
    # the product is written into the pattern itself (out=): PyTorch copies a pattern it does not write into, and
    # its values are ``scores``. beta=1 adds their zeros (the same scores): PyTorch's CPU kernel runs faster than
    # with beta=0
    torch.sparse.sampled_addmm(chosen, q.reshape(R, D), k_rows.T, beta=1.0, alpha=scale, out=chosen)
    weights = scores.view(R, W).softmax(-1).view(-1)
    # torch.embedding_bag is F.embedding_bag without its Python checks (these arguments pass them by construction)
    out = torch.embedding_bag(v_rows, value_index, row_starts, False, 0, False, weights, True)[0]  # mode 0: sum
    return out.view(B, H, 1, -1)


@functools.lru_cache(maxsize=64)
def _first_rows_tensor(firsts: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """:func:`token_rows`'s first rows of keys (and values if they differ) as a tensor ``(1 or 2, B, H)``."""
    return torch.tensor(firsts, dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def _first_page_rows(firsts: tuple, page: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The rows of each query head's page 0, ``(1 or 2, B, H, 1, page)`` (made once per layout, never written)."""
    return _first_rows_tensor(firsts, dtype, device)[..., None, None] + torch.arange(page, dtype=dtype, device=device)


@functools.lru_cache(maxsize=256)
def _first_written_rows(firsts: tuple, page: int, written: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The rows of the first ``written`` keys of each query head's page 0, ``(1 or 2, B, H, written)`` (made once per
    layout and count, never written)."""
    return _first_page_rows(firsts, page, dtype, device)[..., 0, :written].contiguous()


@functools.lru_cache(maxsize=256)
def _row_starts(rows: int, width: int, index_dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Row starts (of ``index_dtype``; also ``embedding_bag``'s offsets) of a sparse pattern of ``rows`` rows of
    ``width`` entries each: the same every decode step of a given budget, so made once (never written)."""
    return torch.arange(rows + 1, dtype=index_dtype, device=device) * width


_csr_beta_notice_seen = False


def _csr(row_starts, columns, values, size):
    """A CSR tensor, unchecked. PyTorch warns once per process that sparse CSR support is in beta; that notice is
    silenced on the first call (later constructions do not warn)."""
    global _csr_beta_notice_seen
    if _csr_beta_notice_seen:
        return torch.sparse_csr_tensor(row_starts, columns, values, size, check_invariants=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        out = torch.sparse_csr_tensor(row_starts, columns, values, size, check_invariants=False)
    _csr_beta_notice_seen = True
    return out
