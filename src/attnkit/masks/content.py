"""Per-head, per-token masks: QK-sparse (dropped queries/keys) and hash-sparse (LSH buckets).

From Pagliardini et al., "Faster Causal Attention Over Large Sequences Through
Sparse Flash Attention" (2023), the last two LongCA-bench patterns:

- QK-sparse: each head keeps a subset of its queries and keys
  (``keep_q (B, H, N)``, ``keep_k (B, Hkv, N)``); dropped queries output zero;
- hash-sparse: queries and keys are hashed into buckets per head
  (``bucket_q``, ``bucket_k``) and attend only within their bucket;
  :func:`lsh_buckets` hashes with random rotations (angular LSH, as Reformer).

Key tensors have ``Hkv`` heads; query head ``h`` reads kv head ``h // (H / Hkv)``.
Tiles are classified with per-bucket prefix counts, exactly for "any".
"""
from __future__ import annotations

import torch

from .base import MaskMod


class PerHead:
    """A ``(B or 1, heads, N)`` tensor read at (batch, query head, position)."""

    def __init__(self, t: torch.Tensor, q_heads: int, name: str, offset: int = 0):
        if not isinstance(t, torch.Tensor) or t.ndim != 3 or t.shape[1] == 0 or q_heads % t.shape[1]:
            raise ValueError(f"{name} must be a tensor (batch, heads or kv_heads, seq) whose heads divide "
                             f"{q_heads}, got {tuple(getattr(t, 'shape', ()))}")
        self.t, self.group, self.offset = t, q_heads // t.shape[1], offset  # entry i is position offset + i

    def at(self, b, h, pos):
        t = self.t.to(pos.device)
        bb = b if t.shape[0] > 1 else torch.zeros_like(b)
        return t[bb, h // self.group, (pos - self.offset).clamp(0, t.shape[2] - 1)]

    def range_counts(self, b, h, lo, hi, values: int):
        """How many tokens of each value in ``[lo, hi]``: shape ``(..., values)``."""
        onehot = torch.nn.functional.one_hot(self.t.long(), values)
        before = torch.nn.functional.pad(onehot.cumsum(2), (0, 0, 1, 0))
        n = self.t.shape[2]
        bb = b if before.shape[0] > 1 else torch.zeros_like(b)
        lo, hi = (lo - self.offset).clamp(0, n - 1), (hi - self.offset).clamp(0, n - 1)
        hh = h // self.group
        return before[bb, hh, hi + 1] - before[bb, hh, lo]


def qk_sparse(keep_q: torch.Tensor, keep_k: torch.Tensor, heads: int) -> MaskMod:
    """Kept queries attend to kept keys (per head)."""
    if keep_q.dtype != torch.bool or keep_k.dtype != torch.bool:
        raise ValueError(f"keep_q and keep_k must be boolean, got {keep_q.dtype} and {keep_k.dtype}")
    kq, kk = PerHead(keep_q, heads, "keep_q"), PerHead(keep_k, heads, "keep_k")

    def tiles(b, h, q_lo, q_hi, k_lo, k_hi):
        cq, ck = kq.range_counts(b, h, q_lo, q_hi, 2), kk.range_counts(b, h, k_lo, k_hi, 2)
        return (cq[..., 1] > 0) & (ck[..., 1] > 0), (cq[..., 0] == 0) & (ck[..., 0] == 0)

    return MaskMod(lambda b, h, q, kv: kq.at(b, h, q) & kk.at(b, h, kv), tiles, "qk_sparse")


def hash_sparse(bucket_q: torch.Tensor, bucket_k: torch.Tensor, heads: int, buckets: int, q_offset: int = 0) -> MaskMod:
    """Query and key share a hash bucket (per head); ``bucket_q[..., i]`` is position ``q_offset + i``."""
    for name, t in (("bucket_q", bucket_q), ("bucket_k", bucket_k)):
        if t.dtype not in (torch.int32, torch.int64) or (t.numel() and (t.min() < 0 or t.max() >= buckets)):
            raise ValueError(f"{name} must hold integer buckets in [0, {buckets})")
    bq, bk = PerHead(bucket_q, heads, "bucket_q", q_offset), PerHead(bucket_k, heads, "bucket_k")

    def tiles(b, h, q_lo, q_hi, k_lo, k_hi):
        cq = bq.range_counts(b, h, q_lo, q_hi, buckets)  # (B, H, nq, 1, buckets)
        ck = bk.range_counts(b, h, k_lo, k_hi, buckets)  # (B, H, 1, nk, buckets)
        both = ((cq > 0) & (ck > 0)).any(-1)
        single = ((cq > 0).sum(-1) == 1) & ((ck > 0).sum(-1) == 1)
        return both, single & both

    return MaskMod(lambda b, h, q, kv: bq.at(b, h, q) == bk.at(b, h, kv), tiles, f"hash_sparse({buckets})")


def lsh_buckets(x: torch.Tensor, buckets: int, seed: int = 0) -> torch.Tensor:
    """Angular LSH: ``argmax([x R, -x R])`` with a fixed random rotation ``R (D, buckets / 2)``."""
    if buckets < 2 or buckets % 2:
        raise ValueError(f"buckets must be an even integer >= 2, got {buckets}")
    g = torch.Generator().manual_seed(seed)
    rot = torch.randn(x.shape[-1], buckets // 2, generator=g, dtype=torch.float64, device="cpu").to(x.device)
    proj = x.detach().double() @ rot  # float64 so that the buckets do not depend on the input dtype's rounding
    return torch.cat([proj, -proj], dim=-1).argmax(dim=-1)
