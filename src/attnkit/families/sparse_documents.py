"""Packed-document (varlen) patterns of LongCA-bench on the block-sparse kernel.

Documents are given per token as ``doc_ids (B, N)`` (never decreasing;
:func:`attnkit.masks.documents.lengths_to_ids` builds them from sequence
lengths). Patterns whose mask already says how the past is seen (prefix-LM,
block-causal, shared-question) are registered for that one pattern only.
"""
from __future__ import annotations

import torch

from ..params import Param, TensorInput
from ..masks import documents as d
from ..registry import SELF_PATTERNS
from ..builders.mask_pipeline import register_mask_mechanism

LONGCA = "Long-Context Attention Benchmark: From Kernel Efficiency to Distributed Context Parallelism"


def example_doc_ids(q, k, v, g, rate: float = 0.1):
    """Random packing: a new document starts at each token with probability ``rate``."""
    starts = torch.rand(k.shape[0], k.shape[2], generator=g) < rate
    starts[:, :1] = False
    return {"doc_ids": starts.long().cumsum(1).to(k.device)}


def _ids(doc_ids, k):
    ids = d.check_ids(doc_ids)
    if ids.shape[1] < k.shape[2] or ids.shape[0] not in (1, k.shape[0]):
        raise ValueError(f"doc_ids has shape {tuple(ids.shape)}; expected (batch or 1, >= kv_len) = "
                         f"({k.shape[0]}, {k.shape[2]})")
    return ids


def prefix_flags(ids: torch.Tensor, fraction: float = 0.5) -> torch.Tensor:
    """``True`` on the first ``fraction`` of every document's tokens."""
    pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    new = torch.nn.functional.pad(ids[:, 1:] != ids[:, :-1], (1, 0), value=True)
    start = torch.where(new, pos, 0).cummax(dim=1).values
    end = torch.where(torch.nn.functional.pad(new[:, 1:], (0, 1), value=True), pos, ids.shape[1]).flip(1)
    end = end.cummin(dim=1).values.flip(1)  # last position of the token's document
    return (pos - start) < fraction * (end - start + 1)


register_mask_mechanism(
    "document",
    papers=(LONGCA, "Block-Attention for Efficient RAG"),
    make_mask=lambda q, k, causal, doc_ids: d.document(_ids(doc_ids, k)),
    tensor_inputs=example_doc_ids,
    inputs={"doc_ids": TensorInput("(B or 1, >= Nk)", "integer document id of every token, non-decreasing along the sequence")},
    patterns=SELF_PATTERNS,
    summary="packed documents (varlen): attention only inside one's own document; causal or full",
    complexity="O(sum_doc len_doc^2)",
)

register_mask_mechanism(
    "prefix_lm",
    papers=(LONGCA, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer"),
    make_mask=lambda q, k, causal, prefix: d.prefix_lm(prefix),
    params={"prefix": Param(1024, int, 'bidirectional prefix tokens', low=0)},
    test_params={"prefix": 9},
    patterns={"noncausal-self"},
    summary="prefix-LM: the first `prefix` tokens are seen by all; causal after them",
    complexity="O(N^2 / 2 + N prefix)",
)


def _prefix_inputs(q, k, v, g):
    ids = example_doc_ids(q, k, v, g)["doc_ids"]
    return {"doc_ids": ids, "is_prefix": prefix_flags(ids)}


def _prefix_document(q, k, causal, doc_ids, is_prefix):
    ids = _ids(doc_ids, k)
    if not isinstance(is_prefix, torch.Tensor) or is_prefix.shape != ids.shape or is_prefix.dtype != torch.bool:
        raise ValueError(f"is_prefix must be a boolean tensor shaped like doc_ids {tuple(ids.shape)}")
    return d.prefix_lm_document(ids, is_prefix)


register_mask_mechanism(
    "prefix_lm_document",
    papers=(LONGCA,),
    make_mask=_prefix_document,
    tensor_inputs=_prefix_inputs,
    inputs={"doc_ids": TensorInput("(B or 1, >= Nk)", "integer document id of every token, non-decreasing along the sequence"),
            "is_prefix": TensorInput("(B or 1, >= Nk) bool", "True for the tokens of each document's bidirectional prefix (shaped like doc_ids)")},
    patterns={"noncausal-self"},
    summary="prefix-LM inside each packed document (`is_prefix` flags each document's prefix)",
    complexity="O(sum_doc len_doc^2)",
)

register_mask_mechanism(
    "shared_question",
    papers=(LONGCA,),
    make_mask=lambda q, k, causal, doc_ids: d.shared_question(_ids(doc_ids, k)),
    tensor_inputs=example_doc_ids,
    inputs={"doc_ids": TensorInput("(B or 1, >= Nk)", "integer document id of every token, non-decreasing along the sequence")},
    patterns={"causal-self"},
    summary="document 0 is a question shared by the answers 1..: each answer sees it and itself, causally",
    complexity="O(sum_answers len (len + question))",
)

register_mask_mechanism(
    "block_causal",
    papers=(LONGCA,),
    make_mask=lambda q, k, causal, block: d.block_causal(block),
    params={"block": Param(1024, int, 'tokens per bidirectional block', low=1)},
    test_params={"block": 10},
    patterns={"noncausal-self"},
    summary="bidirectional inside chunks of `block` tokens, causal across chunks",
    complexity="O(N^2 / 2)",
)

register_mask_mechanism(
    "block_causal_document",
    papers=(LONGCA,),
    make_mask=lambda q, k, causal, doc_ids, block: d.block_causal_document(_ids(doc_ids, k), block),
    params={"block": Param(256, int, 'tokens per bidirectional block', low=1)},
    test_params={"block": 4},
    tensor_inputs=example_doc_ids,
    inputs={"doc_ids": TensorInput("(B or 1, >= Nk)", "integer document id of every token, non-decreasing along the sequence")},
    patterns={"noncausal-self"},
    summary="block-causal inside each packed document",
    complexity="O(sum_doc len_doc^2 / 2)",
)
