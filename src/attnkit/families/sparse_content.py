"""QK-sparse and hash-sparse attention (LongCA-bench's last two patterns) on the block-sparse kernel.

Pagliardini et al., "Faster Causal Attention Over Large Sequences Through
Sparse Flash Attention": QK-dropping keeps a per-head subset of queries and
keys (here the boolean inputs ``keep_q``, ``keep_k``); hash-sparse attention
hashes queries and keys per head (angular LSH with a fixed seeded rotation,
computed from q and k) and attends within a bucket.
"""
from __future__ import annotations

import torch

from ..params import Param, TensorInput
from ..masks.content import hash_sparse, lsh_buckets, qk_sparse
from ..registry import SELF_PATTERNS
from ..builders.mask_pipeline import register_mask_mechanism

SPARSE_FLASH = "Faster Causal Attention Over Large Sequences Through Sparse Flash Attention"


def _keep_flags(q, k, v, g, rate: float = 0.75):
    B, H, N = q.shape[0], q.shape[1], k.shape[2]
    return {"keep_q": torch.rand(B, H, N, generator=g) < rate, "keep_k": torch.rand(B, k.shape[1], N, generator=g) < rate}


def _qk(q, k, causal, keep_q, keep_k):
    for name, t in (("keep_q", keep_q), ("keep_k", keep_k)):
        if not isinstance(t, torch.Tensor) or t.ndim != 3 or t.shape[2] < k.shape[2]:
            raise ValueError(f"{name} must be a boolean tensor (batch, heads, >= kv_len={k.shape[2]})")
    return qk_sparse(keep_q, keep_k, q.shape[1])


register_mask_mechanism(
    "qk_sparse",
    papers=(SPARSE_FLASH,),
    make_mask=_qk,
    tensor_inputs=_keep_flags,
    inputs={"keep_q": TensorInput("(B, H or Hkv, >= Nk) bool", "which positions take part as queries (dropped queries output zero)"),
            "keep_k": TensorInput("(B, H or Hkv, >= Nk) bool", "which positions take part as keys")},
    patterns=SELF_PATTERNS,
    summary="per-head dropped queries and keys (keep_q, keep_k); dropped queries output zero",
    complexity="O(kept_q kept_k)",
)


def _hash(q, k, causal, buckets, seed):
    return hash_sparse(lsh_buckets(q, buckets, seed), lsh_buckets(k, buckets, seed), q.shape[1], buckets,
                       q_offset=k.shape[2] - q.shape[2])


register_mask_mechanism(
    "hash_sparse",
    papers=(SPARSE_FLASH, "Reformer: The Efficient Transformer"),
    make_mask=_hash,
    params={"buckets": Param(8, int, 'LSH buckets (even)', low=2), "seed": Param(0, int, 'seed of the LSH rotation', low=0)},
    test_params={"buckets": 4},
    content_dependent=True,
    summary="queries and keys attend within their per-head angular-LSH bucket",
    complexity="O(N^2 / buckets)",
)
