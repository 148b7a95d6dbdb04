"""Landmark attention (Mohtashami and Jaggi, "Landmark Attention: Random-Access Infinite Context Length
for Transformers").

The sequence is cut into blocks of ``block_size`` tokens whose last token is a
*landmark* (the model inserts a learned landmark token there). A query
attends to the tokens of its own block directly and to every earlier block
through that block's landmark, by a grouped softmax: the landmark's share of
the query's attention is handed to its block's tokens, split among them by a
softmax inside the block. With ``s_ij = q_i k_j / sqrt(d)``, query ``i`` in block
``c``, ``l_b`` the landmark of block ``b`` and ``Z_i = sum_{b < c} e^{s_{i l_b}} +
sum_{j in c, j <= i} e^{s_ij}``::

    p_ij = e^{s_ij} / Z_i                                                 j in block c, j <= i
    p_ij = e^{s_{i l_b}} / Z_i  *  e^{s_ij} / sum_{j' in b, j' != l_b} e^{s_ij'}   j in block b < c, j != l_b
    p_{i l_b} = 0                                  (a landmark passes its weight on to its block)
    o_i = sum_j p_ij v_j

This is the training form (``top_k = 0``: every earlier block is reachable).
At inference the landmarks retrieve blocks: with ``top_k > 0`` only the
``top_k`` earlier blocks whose landmarks score highest for the query enter
``Z_i`` and the output (the paper's block retrieval; the rest of the memory
is never read).

Conventions (checked against the authors' ``landmark_grouped_softmax``): the
landmark is the last token of each block (positions ``block_size - 1``,
``2 block_size - 1``, ...; bottom-right positions with a KV cache); a query's
own block is attended directly (its own landmark too, when the query is the
landmark); retrieval ranks landmark scores in float64, ties to the earlier
block, so float32 and float64 calls retrieve the same blocks unless two scores
are within float32 rounding. Retrieval is not differentiable; gradients reach
every score through the grouped softmax.

Forms: ``reference`` (block by block, as the equations), ``chunked`` (the
same weights for chunks of queries at a time, recomputed in the backward:
``O(N^2)`` time, ``O(chunk N)`` memory) and, with ``top_k > 0``, ``retrieval``
(the default then: each query scores the landmarks, gathers its ``top_k``
blocks and its own, and reads nothing else: ``O(N (N / block_size + top_k
block_size))`` time). Incremental decode runs the default form against the KV
cache.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..builders.kv_cache_step import default_form_of, kv_cache_step
from ..kernels.positions import query_positions, repeat_kv
from ..params import Param
from ..registry import MechanismSpec, register
from ..validation import check_int

PAPER = "Landmark Attention: Random-Access Infinite Context Length for Transformers"


def _check(block_size, top_k):
    check_int("block_size", block_size, minimum=2)
    check_int("top_k", top_k, minimum=0)


def _retrieved(landmark_scores: torch.Tensor, reachable: torch.Tensor, top_k: int) -> torch.Tensor:
    """Which reachable landmarks a query keeps: all when ``top_k = 0``, else its ``top_k`` best (float64, ties earlier)."""
    if top_k == 0:
        return reachable
    ranked = landmark_scores.detach().double().masked_fill(~reachable, float("-inf"))
    rank = ranked.sort(dim=-1, descending=True, stable=True).indices.argsort(dim=-1)
    return reachable & (rank < top_k)


def landmark_weights(q, k, v, *, causal, mask, scale, block_size, top_k):
    """The grouped-softmax weights ``p_ij`` ``(B, H, Nq, Nk)``, block by block as the equations (``o = p @ v``)."""
    _check(block_size, top_k)
    H, Nq, Nk = q.shape[1], q.shape[2], k.shape[2]
    s = (q @ repeat_kv(k, H).transpose(-1, -2)) * scale  # (B, H, Nq, Nk)
    qpos = query_positions(Nq, Nk, q.device)
    landmark = torch.arange(Nk // block_size, device=q.device) * block_size + block_size - 1  # complete blocks
    reachable = landmark[None, :] // block_size < (qpos // block_size)[:, None]  # (Nq, n_landmarks): earlier blocks
    kept = _retrieved(s[..., landmark], reachable.expand(*s.shape[:2], -1, -1), top_k)
    kpos = torch.arange(Nk, device=q.device)
    own = (kpos // block_size == (qpos // block_size)[:, None]) & (kpos <= qpos[:, None])
    top = torch.cat([s.masked_fill(~own, float("-inf")), s[..., landmark].masked_fill(~kept, float("-inf"))], -1)
    p_top = top.softmax(-1)  # over the own block's keys and the kept landmarks
    weights = p_top[..., :Nk].clone()
    for b in range(len(landmark)):
        tokens = slice(b * block_size, (b + 1) * block_size - 1)  # block b without its landmark
        weights[..., tokens] += p_top[..., Nk + b, None] * s[..., tokens].softmax(-1)
    return weights


def _reference(q, k, v, *, causal, mask, scale, block_size, top_k):
    weights = landmark_weights(q, k, v, causal=causal, mask=mask, scale=scale, block_size=block_size, top_k=top_k)
    return weights @ repeat_kv(v, q.shape[1])


def _chunk(scale, block_size, top_k, qpos, Nk):
    def run(qc, keys, values):
        B, H, T, _ = qc.shape
        nb = -(-Nk // block_size)
        s = (qc @ keys.transpose(-1, -2)) * scale
        s = F.pad(s, (0, nb * block_size - Nk), value=float("-inf")).reshape(B, H, T, nb, block_size)
        qb = (qpos // block_size)[:, None]
        kpos = torch.arange(nb * block_size, device=qc.device).reshape(nb, block_size)
        own = (torch.arange(nb, device=qc.device)[:, None] == qb[..., None]) & (kpos <= qpos[:, None, None])
        reachable = (torch.arange(nb, device=qc.device) < qb) & ((torch.arange(nb, device=qc.device) + 1)
                                                                   * block_size <= Nk)
        kept = _retrieved(s[..., -1], reachable.expand(B, H, T, nb), top_k)
        top = torch.cat([s.masked_fill(~own, float("-inf")).flatten(-2), s[..., -1].masked_fill(~kept, float("-inf"))],
                        dim=-1).softmax(-1)
        p_own, p_landmark = top[..., : nb * block_size].reshape(B, H, T, nb, block_size), top[..., nb * block_size :]
        inner = s[..., :-1].softmax(-1).nan_to_num(0.0)  # within each block, its landmark left out
        weights = p_own + F.pad(inner * p_landmark[..., None], (0, 1))
        return weights.flatten(-2)[..., :Nk] @ values

    return run


def _by_query_chunks(make_chunk, q, k, v, scale, block_size, top_k, chunk):
    """Run ``make_chunk(...)``'s closure over query chunks (checkpointed under autograd) and concatenate."""
    _check(block_size, top_k)
    H, Nq, Nk = q.shape[1], q.shape[2], k.shape[2]
    keys, values = repeat_kv(k, H), repeat_kv(v, H)
    qpos = query_positions(Nq, Nk, q.device)
    outs = []
    for c0 in range(0, Nq, chunk):
        run = make_chunk(scale, block_size, top_k, qpos[c0 : c0 + chunk], Nk)
        args = (q[:, :, c0 : c0 + chunk], keys, values)
        outs.append(checkpoint(run, *args, use_reentrant=False) if torch.is_grad_enabled() else run(*args))
    return torch.cat(outs, dim=2)


def _chunked(q, k, v, *, causal, mask, scale, block_size, top_k, chunk: int = 256):
    return _by_query_chunks(_chunk, q, k, v, scale, block_size, top_k, chunk)


def _retrieval_chunk(scale, block_size, top_k, qpos, Nk):
    def run(qc, keys, values):
        B, H, T, D = qc.shape
        n_land = Nk // block_size  # complete blocks: those with a landmark
        landmark = torch.arange(n_land, device=qc.device) * block_size + block_size - 1
        s_land = (qc @ keys[:, :, landmark].transpose(-1, -2)) * scale  # (B, H, T, n_land)
        qb = qpos // block_size
        reachable = torch.arange(n_land, device=qc.device) < qb[:, None]
        kept = _retrieved(s_land, reachable.expand(B, H, T, n_land), top_k)
        valid, chosen = kept.to(torch.int8).topk(min(top_k, n_land), dim=-1)  # (B, H, T, r): the retrieved blocks
        tokens = (chosen[..., None] * block_size + torch.arange(block_size - 1, device=qc.device)).flatten(-2)
        own = (qb * block_size)[:, None] + torch.arange(block_size, device=qc.device)  # (T, block_size)
        own_seen = own <= qpos[:, None]
        index = torch.cat([own.clamp(max=Nk - 1).expand(B, H, T, -1), tokens], dim=-1)  # (B, H, T, bs + r (bs-1))

        def gathered(x):
            return x[:, :, None].expand(B, H, T, *x.shape[2:]).gather(3, index[..., None].expand(-1, -1, -1, -1,
                                                                                               x.shape[-1]))

        kg, vg = gathered(keys), gathered(values)
        s = ((kg @ qc[..., None]).squeeze(-1)) * scale
        s_own, s_blocks = s[..., :block_size], s[..., block_size:].unflatten(-1, (-1, block_size - 1))
        top = torch.cat([s_own.masked_fill(~own_seen, float("-inf")),
                         s_land.gather(-1, chosen).masked_fill(valid == 0, float("-inf"))], dim=-1).softmax(-1)
        inner = s_blocks.softmax(-1) * top[..., block_size:, None]  # a landmark's share split inside its block
        p = torch.cat([top[..., :block_size], inner.flatten(-2)], dim=-1)
        return (p[..., None, :] @ vg).squeeze(-2)

    return run


def _retrieval(q, k, v, *, causal, mask, scale, block_size, top_k, chunk: int = 128):
    return _by_query_chunks(_retrieval_chunk, q, k, v, scale, block_size, top_k, chunk)


def _retrieval_can_run(q, k, v, *, causal, mask, top_k=0, **_):
    return None if top_k else "top_k = 0 is the training form: every earlier block is read (form 'chunked')"


def _flops(batch, heads, q_len, kv_len, head_dim, causal, block_size=64, top_k=0, **_):
    pos = torch.arange(kv_len - q_len, kv_len)
    own = (pos % block_size + 1).sum()
    past = (pos // block_size).clamp(max=top_k) if top_k else pos // block_size
    return 4 * batch * heads * head_dim * int(own + (past * block_size).sum())


register(MechanismSpec(
    name="landmark",
    family="content-sparse",
    papers=(PAPER,),
    patterns=frozenset({"causal-self"}),
    reference=_reference,
    fast={"chunked": _chunked, "retrieval": _retrieval},
    default_forms=("retrieval", "chunked"),
    can_run={"retrieval": _retrieval_can_run},
    step=kv_cache_step(default_form_of("landmark")),
    params={"block_size": Param(64, int, "tokens per block, its landmark (the last token) included", low=2),
            "top_k": Param(0, int, "earlier blocks retrieved by their landmarks (0: all, the training form)", low=0)},
    test_params={"block_size": 8, "top_k": 2},
    supports_mask=False,
    weights=landmark_weights,
    flops=_flops,
    complexity="O(N^2) training; O(N (block_size top_k + N / block_size)) retrieval",
    summary="blocks end in landmark tokens; a grouped softmax reaches earlier blocks through their landmarks (top-k retrieval)",
))
