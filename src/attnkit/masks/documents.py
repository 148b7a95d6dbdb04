"""Masks built from per-token labels: packed documents and their variants.

These are the LongCA-bench ("Long-Context Attention Benchmark: From Kernel
Efficiency to Distributed Context Parallelism") varlen patterns:

- document (block-diagonal) masks from sequence lengths: packing several
  sequences in one row (varlen), full or causal inside each;
  "Block-Attention for Efficient RAG" uses the same block-diagonal form for passages;
- prefix-LM (bidirectional prefix, causal rest; Raffel et al., T5) and prefix-LM per document;
- shared-question: a question followed by several answers; each answer sees the
  question and itself, causally;
- block-causal (bidirectional inside a chunk, causal across chunks) and block-causal per document.

Labels are integer tensors ``(B, N)`` or ``(1, N)`` that never decrease along
the sequence (documents are contiguous), which makes tile classification exact
from the labels at the tile's two ends.
"""
from __future__ import annotations

import torch

from .base import MaskMod, and_masks, causal_mask, or_masks
from ..validation import check_int


def lengths_to_ids(lengths, device=None) -> torch.Tensor:
    """``[3, 2]`` -> ``[[0, 0, 0, 1, 1]]``: the document id of every token, shape ``(1, N)``."""
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=device)
    if lengths.ndim != 1 or (lengths <= 0).any():
        raise ValueError(f"lengths must be a 1-D sequence of positive integers, got {lengths.tolist()}")
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)[None]


def check_ids(ids: torch.Tensor, name: str = "doc_ids") -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int32, torch.int64) or ids.ndim != 2:
        raise ValueError(f"{name} must be an integer tensor of shape (batch, seq), got "
                         f"{getattr(ids, 'dtype', type(ids).__name__)} {tuple(getattr(ids, 'shape', ()))}")
    if ids.shape[1] > 1 and bool((ids[:, 1:] < ids[:, :-1]).any()):
        raise ValueError(f"{name} must never decrease along the sequence (documents are contiguous)")
    return ids.long()


class Labels:
    """Per-token labels read at positions (clamped to the labelled range)."""

    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def at(self, b, pos):
        ids = self.ids.to(pos.device)
        bb = b if ids.shape[0] > 1 else torch.zeros_like(b)
        return ids[bb, pos.clamp(0, ids.shape[1] - 1)]


def same_label(ids: torch.Tensor, name: str = "document") -> MaskMod:
    """Query and key carry the same label (block-diagonal)."""
    lab = Labels(check_ids(ids))

    def tiles(b, h, q_lo, q_hi, k_lo, k_hi):
        q_min, q_max, k_min, k_max = lab.at(b, q_lo), lab.at(b, q_hi), lab.at(b, k_lo), lab.at(b, k_hi)
        return (q_min <= k_max) & (k_min <= q_max), (q_min == q_max) & (k_min == k_max) & (q_min == k_min)

    return MaskMod(lambda b, h, q, kv: lab.at(b, q) == lab.at(b, kv), tiles, name)


def label_at_most(ids: torch.Tensor, name: str = "label<=") -> MaskMod:
    """The key's label is <= the query's label (block-causal over labelled chunks)."""
    lab = Labels(check_ids(ids, "chunk ids"))

    def tiles(b, h, q_lo, q_hi, k_lo, k_hi):
        return lab.at(b, k_lo) <= lab.at(b, q_hi), lab.at(b, k_hi) <= lab.at(b, q_lo)

    return MaskMod(lambda b, h, q, kv: lab.at(b, kv) <= lab.at(b, q), tiles, name)


def key_flags(flags: torch.Tensor, name: str = "key_flags") -> MaskMod:
    """Keys whose per-token boolean flag ``(B, N)`` is set; tiles counted with a prefix sum."""
    return _flags(flags, name, on_keys=True)


def query_flags(flags: torch.Tensor, name: str = "query_flags") -> MaskMod:
    """Queries whose per-token boolean flag ``(B, N)`` is set."""
    return _flags(flags, name, on_keys=False)


def _flags(flags: torch.Tensor, name: str, on_keys: bool) -> MaskMod:
    if not isinstance(flags, torch.Tensor) or flags.dtype != torch.bool or flags.ndim != 2:
        raise ValueError(f"{name} must be a boolean tensor of shape (batch, seq), got "
                         f"{getattr(flags, 'dtype', type(flags).__name__)} {tuple(getattr(flags, 'shape', ()))}")
    lab, n = Labels(flags), flags.shape[1]
    before = Labels(torch.nn.functional.pad(flags.long().cumsum(1), (1, 0)))  # flags set before position p

    def tiles(b, h, q_lo, q_hi, k_lo, k_hi):
        lo, hi = (k_lo, k_hi) if on_keys else (q_lo, q_hi)
        lo, hi = lo.clamp(0, n - 1), hi.clamp(0, n - 1)
        count = before.at(b, hi + 1) - before.at(b, lo)
        return count > 0, count == hi - lo + 1

    return MaskMod(lambda b, h, q, kv: lab.at(b, kv if on_keys else q), tiles, name)


def document(ids: torch.Tensor, causal: bool = False) -> MaskMod:
    """Packed documents: attend within one's own document (causally if asked)."""
    m = same_label(ids)
    return and_masks(m, causal_mask()) if causal else m


def prefix_lm(prefix: int) -> MaskMod:
    """Prefix-LM: the first ``prefix`` keys are visible to all; causal after."""
    from .window import sinks

    return or_masks(sinks(prefix), causal_mask())


def prefix_lm_document(ids: torch.Tensor, is_prefix: torch.Tensor) -> MaskMod:
    """Prefix-LM inside every packed document: ``is_prefix`` flags each document's prefix tokens."""
    return and_masks(same_label(ids), or_masks(key_flags(is_prefix, "prefix"), causal_mask()))


def shared_question(ids: torch.Tensor) -> MaskMod:
    """Label 0 is the question, labels 1.. the answers: each answer sees the question and itself, causally."""
    question = key_flags(check_ids(ids) == 0, "question")
    return and_masks(or_masks(question, same_label(ids)), causal_mask())


def block_causal(block: int) -> MaskMod:
    """Bidirectional inside chunks of ``block`` tokens, causal across chunks."""
    check_int("block", block)

    def tiles(b, h, q_lo, q_hi, k_lo, k_hi):
        return k_lo // block <= q_hi // block, k_hi // block <= q_lo // block

    return MaskMod(lambda b, h, q, kv: kv // block <= q // block, tiles, f"block_causal({block})")


def chunk_ids(ids: torch.Tensor, block: int) -> torch.Tensor:
    """A nondecreasing id per (document, chunk of ``block`` tokens counted from the document start)."""
    ids = check_ids(ids)
    pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    start = torch.where(torch.nn.functional.pad(ids[:, 1:] != ids[:, :-1], (1, 0), value=True), pos, 0)
    start = start.cummax(dim=1).values
    local = (pos - start) // block
    new_chunk = torch.nn.functional.pad((ids[:, 1:] != ids[:, :-1]) | (local[:, 1:] != local[:, :-1]), (1, 0))
    return new_chunk.long().cumsum(dim=1)


def block_causal_document(ids: torch.Tensor, block: int) -> MaskMod:
    """Block-causal inside each packed document (chunks counted from each document's start)."""
    return and_masks(same_label(ids), label_at_most(chunk_ids(ids, block), f"block_causal({block})"))
