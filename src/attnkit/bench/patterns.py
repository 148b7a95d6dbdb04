"""The mask patterns of the kernel matrix (LongCA-bench's list plus attnkit's other static patterns).

Each entry says which registered mechanism runs it, with which parameters and
tensor inputs for a sequence of ``n`` tokens, so that the benchmark, the mask
pictures (``attnkit masks show``) and users share one definition.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..families.sparse_documents import prefix_flags
from ..masks.documents import lengths_to_ids


@dataclass(frozen=True)
class Pattern:
    name: str
    mechanism: str
    causal: bool
    params: Callable[[int], dict] = field(default=lambda n: {})
    inputs: Callable[[int, int, int], dict] = field(default=lambda b, h, n: {})  # (batch, heads, n) -> tensors


def random_lengths(n: int, parts: int, seed: int = 0) -> list[int]:
    """``parts`` random positive lengths summing to ``n`` (seeded)."""
    g = torch.Generator().manual_seed(seed)
    cuts = torch.randperm(n - 1, generator=g)[: parts - 1].sort().values + 1
    edges = torch.cat([torch.tensor([0]), cuts, torch.tensor([n])])
    return edges.diff().tolist()


def _docs(b, h, n, parts=16):
    return {"doc_ids": lengths_to_ids(random_lengths(n, parts))}


def _prefix_docs(b, h, n):
    ids = _docs(b, h, n)["doc_ids"]
    return {"doc_ids": ids, "is_prefix": prefix_flags(ids, 0.25)}


def _question(b, h, n):
    q = n // 4
    return {"doc_ids": lengths_to_ids([q, *random_lengths(n - q, 8, seed=1)])}


def _keep(b, h, n):
    g = torch.Generator().manual_seed(2)
    return {"keep_q": torch.rand(b, h, n, generator=g) < 0.5, "keep_k": torch.rand(b, h, n, generator=g) < 0.5}


PATTERNS = {p.name: p for p in [
    Pattern("full", "softmax", False),
    Pattern("causal", "softmax", True),
    Pattern("sliding_window_causal", "sliding_window", True, lambda n: {"window": 512}),
    Pattern("sliding_window", "sliding_window", False, lambda n: {"window": 256}),
    Pattern("document_full", "document", False, inputs=_docs),
    Pattern("document_causal", "document", True, inputs=_docs),
    Pattern("shared_question", "shared_question", True, inputs=_question),
    Pattern("causal_blockwise", "block_causal", False, lambda n: {"block": 1024}),
    Pattern("prefix_lm_causal", "prefix_lm", False, lambda n: {"prefix": n // 4}),
    Pattern("prefix_lm_document", "prefix_lm_document", False, inputs=_prefix_docs),
    Pattern("global_sliding_window", "global_window", True, lambda n: {"globals": 64, "window": 512}),
    Pattern("block_causal_document", "block_causal_document", False, lambda n: {"block": 256}, _docs),
    Pattern("qk_sparse", "qk_sparse", True, inputs=_keep),
    Pattern("hash_sparse", "hash_sparse", True, lambda n: {"buckets": 8}),
    Pattern("sinks_window", "sinks_window", True, lambda n: {"sinks": 4, "window": 512}),
    Pattern("dilated_window", "dilated_window", True, lambda n: {"window": 256, "dilation": 2}),
    Pattern("sparse_strided", "sparse_strided", True, lambda n: {"stride": 128}),
    Pattern("sparse_fixed", "sparse_fixed", True, lambda n: {"stride": 128, "summary": 8}),
    Pattern("s2_attention", "s2_attention", True),
    Pattern("moa", "moa", True),
    Pattern("multi_window", "multi_window", True),
    Pattern("radial", "radial", False, lambda n: {"tokens_per_frame": max(n // 16, 128)}),
    Pattern("neighborhood_2d", "neighborhood_2d", False, lambda n: {"width": 128, "kernel": 13}),
    Pattern("swin_2d", "swin_2d", False, lambda n: {"width": 128, "window": 16, "shift": 8}),
    Pattern("halo_2d", "halo_2d", False, lambda n: {"width": 128, "block": 16, "halo_size": 4}),
]}

# The target rows (N=16384) and the quick subset.
DEFAULT = ["full", "causal", "sliding_window_causal", "sliding_window", "document_full", "document_causal",
           "shared_question", "causal_blockwise", "prefix_lm_causal", "prefix_lm_document", "global_sliding_window",
           "block_causal_document", "qk_sparse", "hash_sparse"]
QUICK = ["causal", "sliding_window_causal", "document_causal"]
