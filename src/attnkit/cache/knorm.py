"""L2 key norm: keep the keys of lowest norm.

Devoto et al., "A Simple and Effective L_2 Norm-Based Strategy for KV Cache
Compression" (2024): keys with a low L2 norm draw high attention, so the cache
keeps the ``budget`` tokens whose keys have the smallest ``||k||`` (per kv
head; no attention scores needed). The authors leave the first two layers
uncompressed: wrap it, or give those layers a full budget, at the model level.
"""
from __future__ import annotations

import torch

from .policy import Policy


class KeyNorm(Policy):
    chunked = "exact"  # each token's score is its own key's norm

    def rank(self, store, keep):
        return -store.k.to(torch.float64).norm(dim=-1)
