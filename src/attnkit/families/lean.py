"""LeanAttention: softmax attention computed as a stream-K reduction of partial softmax states (decode).

Sanovar et al., "Lean Attention: Hardware-Aware Scalable Attention Mechanism
for the Decode-Phase of Transformers" (2024). The function is softmax
attention, softmax(q k^T * scale) v, so the reference is the materialised
softmax; the ``stream_k`` form (:mod:`attnkit.kernels.lean`) splits the keys
of every (batch, kv head) into per-worker pieces and merges their partial
states (max, sum, output) exactly. Its incremental form is a KV cache whose
decode steps run the stream-K form.
"""
from __future__ import annotations

from ..kernels.lean import lean_attention
from ..validation import check_int
from .score_pipeline import register_score_mechanism


def _stream_k(q, k, v, *, causal, mask, scale, workers, tile, **chunk_sizes_unused):
    check_int("workers", workers)
    check_int("tile", tile)
    return lean_attention(q, k, v, causal=causal, mask=mask, scale=scale, workers=workers, tile=tile)


register_score_mechanism(
    "lean",
    papers=("Lean Attention: Hardware-Aware Scalable Attention Mechanism for the Decode-Phase of Transformers",),
    extra_fast={"stream_k": _stream_k},
    params={"workers": 2, "tile": 256},
    test_params={"workers": 3, "tile": 16},
    summary="softmax attention as a stream-K reduction of partial softmax states across workers (decode)",
)
