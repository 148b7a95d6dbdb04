"""Context parallelism: attention over a sequence split across the ranks of a ``torch.distributed`` group.

- :func:`ring_attention`: K/V blocks passed around a ring, exact softmax merge,
  zigzag load balancing, masks on global positions (causal, sliding window,
  documents) that skip empty blocks; forward and backward.
- :func:`burst_attention`: BurstAttention's two-level partition: K/V around the ring
  forward, the queries' side (Q, dO, D, lse) around it backward with dQ following,
  K/V gradients kept local; tiles within each rank.
- :func:`ulysses_attention`: all-to-all to head sharding, any mechanism, and back.
- :func:`lasp2_attention`: linear, decayed and gated mechanisms with one all-gather of
  per-rank memory states (LASP-2).
- :func:`star_attention`: Star Attention (anchor-block context encoding, then the query over
  every rank's context with a distributed softmax merge).
- :func:`allgather_attention`: softmax over all-gathered K/V, the softmax layers of LASP-2H
  (hybrid models whose linear layers run LASP-2).
- :class:`Sharding` / :class:`Layout`: cut q/k/v, document ids and RoPE positions
  into shards (zigzag or contiguous) and gather outputs back.
- :func:`count_bytes`: bytes this rank sent inside a ``with`` block.

Launch with ``torchrun`` (NCCL on GPUs, gloo on CPU); every call is collective:
all ranks of the group call it with equal shard shapes.
"""
from .allgather import allgather_attention
from .burst import burst_attention
from .comm import PeerFailure, count_bytes
from .lasp2 import lasp2_attention
from .layout import Layout, Sharding
from .star import star_attention
from .ring import ring_attention
from .ulysses import ulysses_attention

__all__ = ["allgather_attention", "burst_attention", "ring_attention", "ulysses_attention", "lasp2_attention", "star_attention", "Layout", "Sharding", "count_bytes", "PeerFailure"]
