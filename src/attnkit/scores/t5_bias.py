"""T5 relative position bias: a learned scalar per (head, log-spaced distance bucket).

Raffel et al., "Exploring the Limits of Transfer Learning with a Unified
Text-to-Text Transformer" (2020), Section 2.1: each head adds a learned bias
``table[h, bucket(j - i)]`` to its logits. Half the buckets hold exact
distances ``0 .. max_exact - 1``; the rest grow logarithmically up to
``max_distance``, beyond which all distances share the last bucket. Without a
causal mask (encoder) keys before and after the query use separate halves of
the buckets ("bidirectional"); with one (decoder) only the past is bucketed.
"""
from __future__ import annotations

import math

import torch


def t5_buckets(relative: torch.Tensor, *, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bucket index of each relative position ``key - query`` (integer tensor)."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp_min(0)
    max_exact = num_buckets // 2
    # Computed in float64 from integers, so every dtype of q gets the same buckets.
    scaled = torch.log(distance.double().clamp_min(1) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (scaled * (num_buckets - max_exact)).long()
    large = large.clamp_max(num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


def t5_bias_mod(table: torch.Tensor, *, bidirectional: bool, max_distance: int):
    """Score modifier adding ``table[h, bucket(k_pos - q_pos)]`` (table: ``(heads, num_buckets)``)."""
    num_buckets = table.shape[1]

    def mod(scores, q_pos, k_pos):
        relative = k_pos[None, :] - q_pos[:, None]
        idx = t5_buckets(relative, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
        return scores + table[:, idx].to(scores.dtype)

    return mod
