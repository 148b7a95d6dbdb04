"""Hymba's model recipe as a :class:`ModelConfig`.

Dong et al., "Hymba: A Hybrid-head Architecture for Small Language Models" (2024):

- every layer is a hybrid-head layer: attention heads and SSM heads run in parallel on the
  same input, each branch normalised and rescaled by a learned vector before they are
  combined (``{"hymba": [attention, ssm]}``, :class:`attnkit.models.ParallelHeads`);
- ``meta_tokens`` learnable tokens are prepended to every sequence (``ModelConfig.meta_tokens``);
- full attention in three layers only, the first, the middle and the last; sliding-window
  attention in all others, where the meta tokens stay visible (``sinks_window`` with
  ``sinks = meta_tokens``);
- cross-layer KV sharing: consecutive layers of the same kind share one KV cache in pairs
  (``ModelConfig.kv_sharing``).
"""
from __future__ import annotations

from .config import ModelConfig
from ..validation import check_int


def full_attention_layers(layers: int) -> tuple[int, ...]:
    """The paper's placement: the first, the middle and the last layer."""
    return tuple(sorted({0, layers // 2, layers - 1}))


def hymba_config(*, vocab_size: int = 256, dim: int = 64, heads: int = 4, layers: int = 8, window: int = 32,
                 meta_tokens: int = 8, ssm: str = "mamba", kv_sharing: bool = True, **sizes) -> ModelConfig:
    """A Hymba model: hybrid heads (attention + ``ssm``) in every layer, full attention in the first,
    middle and last layer and ``sinks_window`` attention elsewhere, meta tokens, paired KV sharing.
    ``sizes``: other :class:`ModelConfig` fields (``kv_heads``, ``mlp_ratio``, ...)."""
    check_int("layers", layers)
    check_int("window", window)
    check_int("meta_tokens", meta_tokens, minimum=0)
    full = full_attention_layers(layers)
    schedule = "".join("F" if i in full else "S" for i in range(layers))
    local = {"mechanism": "sinks_window", "sinks": meta_tokens, "window": window}
    mixers = {"F": {"hymba": ["softmax", ssm]}, "S": {"hymba": [local, ssm]}}
    return ModelConfig(vocab_size=vocab_size, dim=dim, heads=heads, schedule=schedule, mixers=mixers,
                       meta_tokens=meta_tokens, kv_sharing=kv_sharing, **sizes)
