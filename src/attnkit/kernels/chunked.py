"""Memory-efficient exact attention: chunked online softmax.

After Rabe & Staats, "Self-attention Does Not Need O(n^2) Memory": keys and
values are visited one chunk at a time while a running maximum and running sum
keep the softmax exact, so no ``N x N`` matrix is ever held. Differentiation
recomputes in the backward pass (checkpointing, as the paper does), at two
levels: each query chunk keeps only its inputs, and within it each (query
chunk, key chunk) tile keeps only the running row statistics it produced, so
the backward pass holds one tile's intermediates at a time and training memory
stays O(N) with a small constant.

The kernel is generic over a *score modifier* ``mod(scores, q_pos, k_pos)``
(ALiBi, soft-capping, relative biases — the FlexAttention ``score_mod`` idea)
and over the normaliser (:mod:`attnkit.scores.normalisers`), which is how the
non-softmax mechanisms of the softmax family run in linear memory.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from ..scores.normalisers import SOFTMAX, Normaliser
from ..scores.user_mask import apply_mask
from .positions import query_positions

ScoreMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def chunked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    mask: torch.Tensor | None,
    scale: float,
    score_mod: ScoreMod | None = None,
    normaliser: Normaliser = SOFTMAX,
    q_chunk: int = 512,
    kv_chunk: int = 1024,
) -> torch.Tensor:
    """Exact attention in O(N) memory, forward and backward.

    ``mask`` is ``None`` or a 4-D tensor broadcastable to ``(B, H, Nq, Nk)``
    (boolean: True = attend, or additive float).
    """
    chunk = _QueryChunk(causal, scale, score_mod, normaliser, kv_chunk, k.shape[1])
    return over_query_chunks(chunk, q, k, v, causal=causal, mask=mask, q_chunk=q_chunk)


def over_query_chunks(chunk, q, k, v, *inputs, causal: bool, mask, q_chunk: int) -> torch.Tensor:
    """The query loop of chunked attention: ``chunk(q_rows, k, v, *inputs, q_pos, k_end, mask_rows)``
    for each block of ``q_chunk`` queries, concatenated along the queries.

    ``q_pos`` are the block's absolute (bottom-right aligned) positions; ``k_end`` the number of
    keys the block may see (causal: up to its last query; else all). With gradients on, each
    block keeps only its inputs and is recomputed in the backward pass (checkpointing).
    """
    Nq, Nk = q.shape[2], k.shape[2]
    if mask is not None:
        mask = mask.expand(mask.shape[0], mask.shape[1], Nq, Nk)
    q_pos = query_positions(Nq, Nk, q.device)
    outs = []
    for qs in range(0, Nq, q_chunk):
        qe = min(qs + q_chunk, Nq)
        # With causal attention, keys after the chunk's last query are never visible.
        k_end = max(0, min(Nk, int(q_pos[qe - 1]) + 1)) if causal else Nk
        args = (q[:, :, qs:qe], k, v, *inputs, q_pos[qs:qe], k_end, mask[..., qs:qe, :] if mask is not None else None)
        if torch.is_grad_enabled():
            outs.append(checkpoint(chunk, *args, use_reentrant=False))
        else:
            outs.append(chunk(*args))
    return torch.cat(outs, dim=2)


class _QueryChunk:
    """One block of queries against every visible key chunk, with an online normaliser.

    The running state depends on the normaliser's kind: ``exp`` (acc, denom,
    running max), ``sum`` (acc), ``ratio`` (acc, denom), ``standardise`` (count,
    mean, M2, sum (s - mean) v, sum v).
    """

    def __init__(self, causal, scale, score_mod, normaliser, kv_chunk, kv_heads):
        self.causal, self.scale, self.score_mod = causal, scale, score_mod
        self.norm, self.kv_chunk, self.kv_heads = normaliser, kv_chunk, kv_heads

    def __call__(self, q, k, v, q_pos, k_end, mask):
        B, H, cq, _ = q.shape
        state = self._initial_state(q.new_zeros(B, H, cq, 1), v.shape[-1])
        for ks in range(0, k_end, self.kv_chunk):
            ke = min(ks + self.kv_chunk, k_end)
            tile = (q, k[:, :, ks:ke], v[:, :, ks:ke], q_pos, ks, mask[..., ks:ke] if mask is not None else None)
            if torch.is_grad_enabled():
                state = checkpoint(self._tile, *tile, *state, use_reentrant=False)
            else:
                state = self._tile(*tile, *state)
        return self._finish(state)

    def _initial_state(self, zeros, dv):
        acc = zeros.expand(*zeros.shape[:3], dv).clone()
        kind = self.norm.kind
        if kind == "exp":
            return acc, zeros, torch.full_like(zeros, float("-inf"))
        if kind == "sum":
            return (acc,)
        if kind == "ratio":
            return acc, zeros
        return zeros, zeros, zeros, acc, acc.clone()  # standardise

    def _tile(self, q, k, v, q_pos, ks, mask, *state):
        """Fold one key chunk into the running state of every query row."""
        B, H, cq, D = q.shape
        ck = k.shape[2]
        q5 = q.reshape(B, self.kv_heads, H // self.kv_heads, cq, D)
        k_pos = torch.arange(ks, ks + ck, device=q.device)
        s = (q5 @ k[:, :, None].transpose(-1, -2)).reshape(B, H, cq, ck) * self.scale
        if self.score_mod is not None:
            s = self.score_mod(s, q_pos, k_pos)
        allowed = (k_pos[None, :] <= q_pos[:, None]) if self.causal else None
        s, allowed = apply_mask(s, allowed, mask)
        kind = self.norm.kind
        if kind == "exp":
            acc, denom, run_max = state
            t = s.abs() if self.norm.signed else s
            if allowed is not None:
                t = t.masked_fill(~allowed, float("-inf"))
            new_max = torch.maximum(run_max, t.amax(dim=-1, keepdim=True)).detach()
            safe_max = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
            p = torch.exp(t - safe_max)
            rescale = torch.exp(run_max - safe_max)
            w = p * torch.sign(s) if self.norm.signed else p
            return acc * rescale + self._pv(w, v), denom * rescale + p.sum(dim=-1, keepdim=True), new_max
        if kind == "standardise":
            return self._merge_standardise(state, s, allowed, v)
        w = self.norm.phi(s)
        if allowed is not None:
            w = w.masked_fill(~allowed, 0.0)
        if kind == "sum":
            return (state[0] + self._pv(w, v),)
        return state[0] + self._pv(w, v), state[1] + w.sum(dim=-1, keepdim=True)

    def _finish(self, state):
        kind = self.norm.kind
        if kind == "sum":
            return state[0]
        if kind == "standardise":
            count, _, m2, centred_v, total_v = state
            var = m2 / count.clamp_min(1.0)
            return self.norm.affine(centred_v / torch.sqrt(var + self.norm.eps), total_v)
        acc, denom = state[0], state[1]
        alive = denom > 0
        return torch.where(alive, acc / torch.where(alive, denom, torch.ones_like(denom)), torch.zeros_like(acc))

    def _merge_standardise(self, state, s, allowed, v):
        """Fold one key chunk into (count, mean, M2, sum (s - mean) v, sum v) of each row.

        Chan et al.'s pairwise update of mean and M2; the centred value sum moves
        to the new mean with ``(old_mean - new_mean) * sum v``.
        """
        ones = torch.ones_like(s) if allowed is None else allowed.to(s.dtype).expand_as(s)
        if allowed is not None:
            s = s.masked_fill(~allowed, 0.0)  # masked scores may be -inf
        n_b = ones.sum(dim=-1, keepdim=True)
        mean_b = s.sum(dim=-1, keepdim=True) / n_b.clamp_min(1.0)
        centred = (s - mean_b) * ones
        m2_b = (centred * centred).sum(dim=-1, keepdim=True)
        cv_b, tv_b = self._pv(centred, v), self._pv(ones, v)
        n_a, mean_a, m2_a, cv_a, tv_a = state
        n = n_a + n_b
        delta = mean_b - mean_a
        mean = mean_a + delta * n_b / n.clamp_min(1.0)
        m2 = m2_a + m2_b + delta * delta * n_a * n_b / n.clamp_min(1.0)
        cv = cv_a + (mean_a - mean) * tv_a + cv_b + (mean_b - mean) * tv_b
        return n, mean, m2, cv, tv_a + tv_b

    def _pv(self, w, v):
        B, H, cq, ck = w.shape
        out = w.reshape(B, self.kv_heads, H // self.kv_heads, cq, ck) @ v[:, :, None]
        return out.reshape(B, H, cq, v.shape[-1])
