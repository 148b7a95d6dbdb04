"""Quest: query-aware page selection for long-context decode (Tang et al., "Quest: Query-Aware Sparsity for
Efficient Long-Context LLM Inference", ICML 2024).

The KV cache is cut into pages of ``P = page`` tokens. Each page keeps the
element-wise minimum and maximum of its keys, ``m_i = min_{j in page i} k_j``,
``M_i = max_{j in page i} k_j``. A query scores each page by an upper bound of
any of its keys' dot products::

    U_i = sum_d max(q_d m_{i,d}, q_d M_{i,d})        >=  max_{j in page i} q . k_j

and attends exactly (softmax over the kept keys) to the ``top_k`` pages of
highest ``U_i``. The cache is not shrunk: the bounds only choose what a query reads.

Conventions (checked against the authors' kernels, where the last page is
always read): a query's *current* page (the one holding its own position, full
or not) is always attended, causal inside, and counts toward ``top_k``; the
other ``top_k - 1`` come from the complete pages before it (all of them while
there are fewer), so the choice never depends on later tokens and decoding
token by token equals one call. The reference breaks ties toward the earlier
page; the torch forms take ``topk``'s choice (exact ties of real scores do not occur in practice), the compiled
decode kernel the earlier page; one choice per query head (the bounds of its kv head). ``U`` is computed as
``[relu(q), min(q, 0)] . [M_i, m_i]`` (the same number: one matrix product over
the bounds, which are stored as ``2 D`` rows over the pages, so that the compiled
kernel reads only the ``D`` rows a query's signs select).

Forms: ``reference`` (bounds and scores materialised in float64, the element
mask from the equations) and ``selected_blocks`` (the run-time block-selection
engine, one selection per token and head). The incremental state is a
:class:`~attnkit.state.DigestKVCache` holding every key and value plus the
bounds of the complete pages, maintained as tokens are appended (a page's bounds
are computed once, when it fills), so a decode step reads the bounds (``2 N d / P``
numbers) and ``top_k`` pages instead of the whole cache; a call of at most 64
queries reads the keys of its pages for every head at once
(:func:`~attnkit.kernels.gathered_keys.paged_attention`) instead of running the engine,
and a decode step without gradients on the CPU reads them without copying them
(:func:`~attnkit.kernels.gathered_keys.decode_page_attention`), or, when the optional
compiled kernel is built (``attnkit kernels --build``), bounds, chooses and attends in
one pass per head (:mod:`attnkit.kernels.quest_decode`).
"""
from __future__ import annotations

import functools

import torch

from ..kernels.gathered_keys import decode_page_attention, paged_attention, reads_in_place
from ..kernels.quest_decode import compiled_decode_step, compiled_step_applies
from ..kernels.positions import causal_mask, query_positions, repeat_kv
from ..kernels.selected_blocks import selected_block_attention
from ..masks.selection import BlockSelection, block_selection
from ..params import Param
from ..reference import materialised_attention
from ..registry import MechanismSpec, register
from ..builders.kv_cache_step import read_every_key
from ..state import DigestKVCache

PAPER = "Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference"


def page_bounds(k: torch.Tensor, page: int, first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max keys ``(B, Hkv, n, D)`` of the complete pages ``first ..`` of ``k``."""
    B, Hkv, N, D = k.shape
    n = N // page
    pages = k[:, :, first * page: n * page].reshape(B, Hkv, n - first, page, D)
    return pages.amin(3), pages.amax(3)


def page_digest(k: torch.Tensor, page: int, first: int = 0) -> torch.Tensor:
    """``(B, Hkv, 2 D, n)``: the bounds ``[M_i; m_i]`` of the complete pages ``first ..`` as rows over the pages, so
    that ``U`` is one product and a query can read only the rows its signs need (``M_d`` where ``q_d > 0``)."""
    if k.shape[2] // page == first:  # no page completed (most decode steps)
        return k.new_empty(*k.shape[:2], 2 * k.shape[3], 0)
    mins, maxs = page_bounds(k, page, first)
    return torch.cat([maxs, mins], dim=-1).mT.contiguous()


def quest_selection(q, digest, kv_len: int, *, page: int, top_k: int, chunk: int = 4096) -> BlockSelection:
    """Each query's pages: its current page, then up to ``top_k - 1`` complete past pages by ``U``."""
    blocks, valid = quest_pages(q, digest, kv_len, page=page, top_k=top_k, chunk=chunk)
    return block_selection(blocks, valid, block_q=1, block_k=page, q_len=q.shape[2], kv_len=kv_len)


def quest_pages(q, digest, kv_len: int, *, page: int, top_k: int, chunk: int = 4096):
    """The page numbers ``(B, H, Nq, k)`` (slot 0: the current page; the others distinct past pages) and their use.

    :func:`upper_bounds` of every page; the best ``top_k - 1`` past pages are kept."""
    B, H, Nq, _ = q.shape
    n = digest.shape[3]
    current = query_positions(Nq, kv_len, q.device) // page
    picks = min(top_k - 1, n)
    chosen, used = [], []
    for c0 in range(0, Nq, chunk):
        bound = upper_bounds(q[:, :, c0:c0 + chunk], digest)
        first = (kv_len - Nq + c0) // page  # the chunk's first query's current page: pages before it are past
        if first < n:  # some query's current page is complete: it and later pages are not past
            past = torch.arange(n, device=q.device) < current[c0:c0 + chunk, None]
            bound = bound.masked_fill(~past, float("-inf"))
        score, index = bound.topk(picks, dim=-1, sorted=False)
        chosen.append(index)
        used.append(score > float("-inf") if first < picks else torch.ones_like(index, dtype=torch.bool))
    blocks = torch.cat([current.expand(B, H, Nq).unsqueeze(-1), *chosen] if len(chosen) == 1 else
                       [current.expand(B, H, Nq).unsqueeze(-1), torch.cat(chosen, dim=2)], dim=-1)
    valid = torch.cat([torch.ones(B, H, Nq, 1, dtype=torch.bool, device=q.device), *used] if len(used) == 1 else
                      [torch.ones(B, H, Nq, 1, dtype=torch.bool, device=q.device), torch.cat(used, dim=2)], dim=-1)
    return blocks, valid


def decode_pages(q, digest, kv_len: int, *, page: int, top_k: int) -> torch.Tensor:
    """A decode step's past pages ``(B, H, top_k - 1)``, in no order: one query per head at the end of a cache of
    ``kv_len`` tokens with at least ``top_k - 1`` complete pages before its current one (so none is masked)."""
    past = (kv_len - 1) // page
    bounds = upper_bounds(q, digest if digest.shape[3] == past else digest[..., :past])
    return bounds.view(*q.shape[:2], -1).topk(top_k - 1, dim=-1, sorted=False).indices


def upper_bounds(q, digest) -> torch.Tensor:
    """``U = [relu(q), min(q, 0)] . [M_i, m_i]`` of ``q (B, H, Nq, D)`` for every page of ``digest (B, Hkv, 2D, P)``
    (its query head's kv head's), ``(B, H, Nq, P)``: one product per group of query heads, the digest never
    repeated."""
    B, H, Nq, D = q.shape
    Hkv, P = digest.shape[1], digest.shape[3]
    low, high = _sign_halves(D, q.dtype, q.device)
    # one query per head broadcasts against the (2, D) bounds as it is: (B, H, 2, D), the same numbers in the
    # same order as (B, H, 1, 2, D)
    split = torch.clamp(q if Nq == 1 else q[..., None, :], low, high).reshape(B * Hkv, H // Hkv * Nq, 2 * D)
    return torch.bmm(split, digest.flatten(0, 1)).view(B, H, Nq, P)


@functools.lru_cache(maxsize=16)
def _sign_halves(D: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The bounds ``(2, D)`` that clamp ``q`` to ``[relu(q), min(q, 0)]`` (made once, never written)."""
    inf = torch.full((D,), float("inf"), dtype=dtype, device=device)
    zero = torch.zeros(D, dtype=dtype, device=device)
    return torch.stack([zero, -inf]), torch.stack([inf, zero])


def _attend(q, k, v, digest, scale, page, top_k, few: int = 64):
    """Attention over the chosen pages: a call of at most ``few`` queries gathers its pages' keys (one query
    with at least ``top_k - 1`` complete pages before its own, when :func:`reads_in_place`: reads them where they
    are, in one compiled pass when that kernel is built), a longer call runs the block-selection engine (the same
    pairs, exactly)."""
    Nq, Nk = q.shape[2], k.shape[2]
    if Nq > few:
        sel = quest_selection(q.detach(), digest, Nk, page=page, top_k=top_k)
        return selected_block_attention(q, k, v, sel, scale=scale, causal=True)
    if Nq == 1 and (Nk - 1) // page >= top_k - 1 and reads_in_place(q, k, v):
        if compiled_step_applies(q, k, v, digest):
            return compiled_decode_step(q, k, v, digest, page=page, top_k=top_k, scale=scale)
        past = decode_pages(q, digest, Nk, page=page, top_k=top_k)
        return decode_page_attention(q, k, v, past, page=page, scale=scale)
    blocks, valid = quest_pages(q.detach(), digest, Nk, page=page, top_k=top_k)
    return paged_attention(q, k, v, blocks, valid, page=page, scale=scale)


def quest_fast(q, k, v, *, causal, mask, scale, page, top_k):
    with torch.no_grad():
        digest = page_digest(k.detach(), page)
    return _attend(q, k, v, digest, scale, page, top_k)


def reference_mask(q, k, *, page, top_k) -> torch.Tensor:
    """The (query, key) pairs Quest reads, ``(B, H, Nq, Nk)``, from the equations in float64."""
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    keys = repeat_kv(k, H).double()
    n = Nk // page
    blocks = keys[:, :, : n * page].reshape(B, H, n, page, D)
    m, M = blocks.min(3).values, blocks.max(3).values
    qq = q.double()[:, :, :, None, :]
    U = torch.maximum(qq * m[:, :, None], qq * M[:, :, None]).sum(-1)  # (B, H, Nq, n)
    current = query_positions(Nq, Nk, q.device) // page
    past = torch.arange(n, device=q.device) < current[:, None]
    rank = U.masked_fill(~past, float("-inf")).sort(dim=-1, descending=True, stable=True).indices.argsort(-1)
    routed = past & (rank < top_k - 1)
    key_page = torch.arange(Nk, device=q.device) // page
    in_routed = torch.cat([routed, routed.new_zeros(B, H, Nq, 1)], -1)[..., key_page.clamp(max=n)] & (key_page < n)
    return (in_routed | (key_page == current[:, None])) & causal_mask(Nq, Nk, q.device)


def _reference(q, k, v, *, causal, mask, scale, page, top_k):
    kept = reference_mask(q.detach(), k.detach(), page=page, top_k=top_k)
    return materialised_attention(q, k, v, causal=False, mask=kept, scale=scale)


def _step(q, k, v, state, *, causal, mask, scale, page, top_k):
    def summarise(cache, done):
        if done and cache.length // page == done:  # no page completed (most decode steps)
            return None
        with torch.no_grad():
            return (page_digest(cache.k.detach(), page, first=done),)

    state = DigestKVCache.start(k, v, summarise, dim=3) if state is None else state.append(k, v, summarise)
    return _attend(q, state.k, state.v, state.digest(0), scale, page, top_k), state


_step.read = read_every_key  # attnkit.capture: the step reads every key so far
_step.compiled_kernel = "quest_decode"  # attnkit info: the decode steps this kernel runs when it is built


def _state_size(batch, heads, kv_heads, seq_len, head_dim, v_dim=None, *, page=16, **_):
    return batch * kv_heads * (seq_len * (head_dim + (v_dim or head_dim)) + 2 * (seq_len // page) * head_dim)


def quest_pairs(q_len: int, kv_len: int, page: int, top_k: int) -> int:
    """(query, key) pairs per head: the causal part of the current page plus up to ``top_k - 1`` whole pages."""
    pos = torch.arange(kv_len - q_len, kv_len)
    return int((pos % page + 1 + torch.clamp(pos // page, max=top_k - 1) * page).sum())


def _flops(batch, heads, q_len, kv_len, head_dim, causal, page=16, top_k=64, **_):
    bounds = 4 * batch * heads * q_len * (kv_len // page) * head_dim
    return 4 * batch * heads * quest_pairs(q_len, kv_len, page, top_k) * head_dim + bounds


register(MechanismSpec(
    name="quest",
    family="training-free-sparse",
    papers=(PAPER,),
    patterns=frozenset({"causal-self"}),
    reference=_reference,
    fast={"selected_blocks": quest_fast},
    step=_step,
    params={"page": Param(16, int, "tokens per page", low=1),
            "top_k": Param(64, int, "pages each query reads, its current page included", low=1)},
    test_params={"page": 4, "top_k": 3},
    supports_mask=False,
    flops=_flops,
    state_size=_state_size,
    complexity="O(N d / page + top_k page d) per query",
    summary="decode: each query reads its top-k pages by a min/max key upper bound on q . k, and its current page",
))
