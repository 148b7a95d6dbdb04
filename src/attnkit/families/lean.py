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
from ..params import Param
from ..builders.score_pipeline import register_score_mechanism


def _stream_k(q, k, v, *, causal, mask, scale, workers, tile, **chunk_sizes_unused):
    return lean_attention(q, k, v, causal=causal, mask=mask, scale=scale, workers=workers, tile=tile)


register_score_mechanism(
    "lean",
    papers=("Lean Attention: Hardware-Aware Scalable Attention Mechanism for the Decode-Phase of Transformers",),
    extra_fast={"stream_k": _stream_k},
    params={"workers": Param(2, int, "workers the decode step's keys are split across (threads on a CPU)", low=1),
            "tile": Param(256, int, "keys per unit of work (the grain of the split)", low=1)},
    test_params={"workers": 3, "tile": 16},
    summary="softmax attention as a stream-K reduction of partial softmax states across workers (decode)",
)
