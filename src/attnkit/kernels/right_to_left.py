"""Causal softmax attention whose logits read a sum over the keys between key and query, in O(N) memory.

Some mechanisms add to the score ``s_ij`` of query ``i`` and key ``j`` a term of the suffix sum

    r_ij = sum_{l = j .. i} g_il

of per-pair gates ``g`` (zero on the pairs a query leaves out): CoPE's contextual position
(Golovneva et al., "Contextual Position Encoding: Learning to Count What's Important") and TRA's
contextual distance (Opper et al., "TRA: Better Length Generalisation with Threshold Relative
Attention"). The sum runs from the key up to the query, so a block of queries visits its key tiles
from the last to the first: in a tile, ``r`` is the tile's reversed cumulative sum of gates plus
``right``, each query's sum of the gates of the tiles already visited (to its right), carried next
to the online softmax's (unnormalised output, sum, running maximum). Exact. The query loop is
chunked attention's (:func:`attnkit.kernels.chunked.over_query_chunks`: each query block is
recomputed in the backward pass) and each tile is checkpointed, so the backward pass holds one
tile at a time.

What is the mechanism's own is a :class:`SuffixRule`.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch.utils.checkpoint import checkpoint

from ..scores.user_mask import apply_mask
from .chunked import over_query_chunks


class SuffixRule(Protocol):
    """A mechanism's gates and logits, given a tile's scaled scores ``s (B, H, cq, ck)``."""

    def block(self, q: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        """What the tiles of the query block ``q`` read of the mechanism's tensor input ``side``."""
        ...

    def gates(self, s: torch.Tensor, visible: torch.Tensor, side: torch.Tensor, ks: int,
              ke: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gates, included)`` of the tile of keys ``ks:ke``: the pairs that enter the softmax (among the
        ``visible`` ones) and their gates, zero elsewhere. ``side`` is :meth:`block`'s result."""
        ...

    def logits(self, s: torch.Tensor, r: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        """The softmax's logits from the scores and the suffix sums ``r`` of the gates."""
        ...


def right_to_left_attention(q, k, v, side, *, rule: SuffixRule, mask, scale, q_chunk: int,
                            kv_chunk: int) -> torch.Tensor:
    """Causal attention ``(B, H, Nq, Dv)`` with the logits of ``rule``; rows that include no key are zeros.

    ``side`` is the mechanism's tensor input (read by ``rule.block``), ``mask`` ``None`` or a 4-D
    tensor broadcastable to ``(B, H, Nq, Nk)`` (boolean: True = attend, or additive float).
    """
    return over_query_chunks(_RightToLeftChunk(rule, scale, kv_chunk), q, k, v, side, causal=True, mask=mask,
                             q_chunk=q_chunk)


class _RightToLeftChunk:
    """One block of queries against its visible keys, key tiles visited right to left."""

    def __init__(self, rule, scale, kv_chunk):
        self.rule, self.scale, self.kv_chunk = rule, scale, kv_chunk

    def __call__(self, q, k, v, side, q_pos, k_end, mask):
        B, H, cq, _ = q.shape
        zeros = q.new_zeros(B, H, cq, 1)
        state = (zeros.expand(B, H, cq, v.shape[-1]).clone(), zeros, torch.full_like(zeros, float("-inf")), zeros)
        side = self.rule.block(q, side)
        for ks in reversed(range(0, k_end, self.kv_chunk)):
            ke = min(ks + self.kv_chunk, k_end)
            tile = (q, k[:, :, ks:ke], v[:, :, ks:ke], side, q_pos, ks, ke,
                    mask[..., ks:ke] if mask is not None else None)
            if torch.is_grad_enabled():
                state = checkpoint(self._tile, *tile, *state, use_reentrant=False)
            else:
                state = self._tile(*tile, *state)
        acc, denom = state[0], state[1]
        alive = denom > 0
        return torch.where(alive, acc / torch.where(alive, denom, torch.ones_like(denom)), torch.zeros_like(acc))

    def _tile(self, q, k, v, side, q_pos, ks, ke, mask, acc, denom, run_max, right):
        """Fold the key tile ``ks:ke`` into the block's state; ``right`` gains the tile's gates."""
        B, H, cq, D = q.shape
        Hkv, ck = k.shape[1], k.shape[2]
        G = H // Hkv
        k_pos = torch.arange(ks, ke, device=q.device)
        s = (q.reshape(B, Hkv, G, cq, D) @ k[:, :, None].transpose(-1, -2)).reshape(B, H, cq, ck) * self.scale
        s, visible = apply_mask(s, (k_pos[None, :] <= q_pos[:, None]).expand_as(s), mask)
        gates, included = self.rule.gates(s, visible, side, ks, ke)
        r = gates.flip(-1).cumsum(-1).flip(-1) + right
        t = self.rule.logits(s, r, side).masked_fill(~included, float("-inf"))
        new_max = torch.maximum(run_max, t.amax(dim=-1, keepdim=True)).detach()
        safe_max = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        p = torch.exp(t - safe_max)
        rescale = torch.exp(run_max - safe_max)
        pv = (p.reshape(B, Hkv, G, cq, ck) @ v[:, :, None]).reshape(B, H, cq, v.shape[-1])
        right = right + gates.sum(dim=-1, keepdim=True)
        return acc * rescale + pv, denom * rescale + p.sum(dim=-1, keepdim=True), new_max, right
