"""Memory-efficient exact attention: chunked online softmax.

After Rabe & Staats, "Self-attention Does Not Need O(n^2) Memory": keys and
values are visited one chunk at a time while a running maximum and running sum
keep the softmax exact, so no ``N x N`` matrix is ever held. Differentiation
recomputes each query chunk in the backward pass (checkpointing, as the paper
does), so training memory stays O(N) as well.

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
    B, H, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    if mask is not None:
        mask = mask.expand(mask.shape[0], mask.shape[1], Nq, Nk)
    q_pos = query_positions(Nq, Nk, q.device)
    outs = []
    for qs in range(0, Nq, q_chunk):
        qe = min(qs + q_chunk, Nq)
        # With causal attention, keys after the chunk's last query are never visible.
        k_end = min(Nk, int(q_pos[qe - 1]) + 1) if causal else Nk
        args = (q[:, :, qs:qe], k, v, q_pos[qs:qe], k_end, mask[..., qs:qe, :] if mask is not None else None)
        fn = _QueryChunk(causal, scale, score_mod, normaliser, kv_chunk, Hkv)
        if torch.is_grad_enabled():
            outs.append(checkpoint(fn, *args, use_reentrant=False))
        else:
            outs.append(fn(*args))
    return torch.cat(outs, dim=2)


class _QueryChunk:
    """One block of queries against every visible key chunk, with an online normaliser."""

    def __init__(self, causal, scale, score_mod, normaliser, kv_chunk, kv_heads):
        self.causal, self.scale, self.score_mod = causal, scale, score_mod
        self.norm, self.kv_chunk, self.kv_heads = normaliser, kv_chunk, kv_heads

    def __call__(self, q, k, v, q_pos, k_end, mask):
        B, H, cq, D = q.shape
        G = H // self.kv_heads
        q5 = q.reshape(B, self.kv_heads, G, cq, D)
        acc = q.new_zeros(B, H, cq, v.shape[-1])
        denom = q.new_zeros(B, H, cq, 1)
        run_max = q.new_full((B, H, cq, 1), float("-inf"))
        stats = None  # running statistics of the "standardise" normaliser
        for ks in range(0, k_end, self.kv_chunk):
            ke = min(ks + self.kv_chunk, k_end)
            k_pos = torch.arange(ks, ke, device=q.device)
            s = (q5 @ k[:, :, None, ks:ke].transpose(-1, -2)).reshape(B, H, cq, ke - ks) * self.scale
            if self.score_mod is not None:
                s = self.score_mod(s, q_pos, k_pos)
            allowed = (k_pos[None, :] <= q_pos[:, None]) if self.causal else None
            if mask is not None:
                m = mask[..., ks:ke]
                if m.dtype == torch.bool:
                    allowed = m if allowed is None else (m & allowed)
                else:
                    s = s + m
                    finite = ~torch.isneginf(m)
                    allowed = finite if allowed is None else (finite & allowed)
            if self.norm.kind == "exp":
                t = s.abs() if self.norm.signed else s
                if allowed is not None:
                    t = t.masked_fill(~allowed, float("-inf"))
                new_max = torch.maximum(run_max, t.amax(dim=-1, keepdim=True)).detach()
                safe_max = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
                p = torch.exp(t - safe_max)
                rescale = torch.exp(run_max - safe_max)
                denom = denom * rescale + p.sum(dim=-1, keepdim=True)
                w = p * torch.sign(s) if self.norm.signed else p
                acc = acc * rescale + self._pv(w, v, ks, ke)
                run_max = new_max
            elif self.norm.kind == "standardise":
                stats = self._merge_standardise(stats, s, allowed, v, ks, ke)
            else:
                w = self.norm.phi(s)
                if allowed is not None:
                    w = w.masked_fill(~allowed, 0.0)
                if self.norm.kind == "ratio":
                    denom = denom + w.sum(dim=-1, keepdim=True)
                acc = acc + self._pv(w, v, ks, ke)
        if self.norm.kind == "sum":
            return acc
        if self.norm.kind == "standardise":
            if stats is None:  # no key visible to any query of this chunk
                return acc
            count, _, m2, centred_v, total_v = stats
            var = m2 / count.clamp_min(1.0)
            return self.norm.affine(centred_v / torch.sqrt(var + self.norm.eps), total_v)
        alive = denom > 0
        return torch.where(alive, acc / torch.where(alive, denom, torch.ones_like(denom)), torch.zeros_like(acc))

    def _merge_standardise(self, stats, s, allowed, v, ks, ke):
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
        cv_b, tv_b = self._pv(centred, v, ks, ke), self._pv(ones, v, ks, ke)
        if stats is None:
            return n_b, mean_b, m2_b, cv_b, tv_b
        n_a, mean_a, m2_a, cv_a, tv_a = stats
        n = n_a + n_b
        delta = mean_b - mean_a
        mean = mean_a + delta * n_b / n.clamp_min(1.0)
        m2 = m2_a + m2_b + delta * delta * n_a * n_b / n.clamp_min(1.0)
        cv = cv_a + (mean_a - mean) * tv_a + cv_b + (mean_b - mean) * tv_b
        return n, mean, m2, cv, tv_a + tv_b

    def _pv(self, w, v, ks, ke):
        B, H, cq, ck = w.shape
        G = H // self.kv_heads
        out = w.reshape(B, self.kv_heads, G, cq, ck) @ v[:, :, None, ks:ke]
        return out.reshape(B, H, cq, v.shape[-1])
