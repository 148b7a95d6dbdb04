"""Fixed structured patterns on the block-sparse kernel: Sparse Transformer, S2-Attention, Radial."""
from __future__ import annotations

from ..params import Param
from ..masks import factorised as f
from ..masks.radial import radial
from ..registry import SELF_PATTERNS
from ..builders.mask_pipeline import register_mask_mechanism

SPARSE_TRANSFORMER = "Generating Long Sequences with Sparse Transformers"

register_mask_mechanism(
    "sparse_strided",
    papers=(SPARSE_TRANSFORMER,),
    make_mask=lambda q, k, causal, stride: f.strided(stride, causal),
    params={"stride": Param(128, int, 'stride of the strided pattern', low=1)},
    test_params={"stride": 6},
    summary="Sparse Transformer strided pattern (merged head): previous `stride` keys + every `stride`-th key",
    complexity="O(N sqrt N)",
)

register_mask_mechanism(
    "sparse_fixed",
    papers=(SPARSE_TRANSFORMER,),
    make_mask=lambda q, k, causal, stride, summary: f.fixed(stride, summary),
    params={"stride": Param(128, int, 'block length', low=1), "summary": Param(8, int, 'summary cells at the end of every block (<= stride)', low=1)},
    test_params={"stride": 8, "summary": 2},
    summary="Sparse Transformer fixed pattern (merged head): own block + the last `summary` cells of every block",
    complexity="O(N sqrt N)",
)

register_mask_mechanism(
    "s2_attention",
    papers=("Efficient LLM Training and Serving with Heterogeneous Context Sharding among Attention Heads",),
    make_mask=lambda q, k, causal, shard, local, vert_stride: f.s2_shards(q.shape[1], shard, local, vert_stride, causal),
    params={"shard": Param(64, int, 'tokens per block', low=1), "local": Param(4, int, 'recent blocks every query sees', low=1),
            "vert_stride": Param(8, int, 'stride of the per-head strided blocks', low=1)},
    test_params={"shard": 4, "local": 2, "vert_stride": 3},
    summary="S2-Attention: `local` recent blocks + a strided shard of blocks that differs per head",
    complexity="O(N^2 / vert_stride + N local shard)",
)

register_mask_mechanism(
    "radial",
    papers=("Radial Attention: O(nlog n) Sparse Attention with Energy Decay for Long Video Generation",),
    make_mask=lambda q, k, causal, tokens_per_frame: radial(tokens_per_frame),
    params={"tokens_per_frame": Param(1024, int, 'tokens per video frame', low=1)},
    test_params={"tokens_per_frame": 12},
    patterns=SELF_PATTERNS,
    summary="video energy-decay mask: spatial band halving as temporal distance doubles, first frame as sink",
    complexity="O(N log N)",
)
