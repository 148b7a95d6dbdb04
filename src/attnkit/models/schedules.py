"""Layer schedules that mix positional schemes: RoPE-to-NoPE hybrids and SWAN-GPT.

Each function returns the ``schedule`` and ``mixers`` of a :class:`~attnkit.models.ModelConfig`::

    ModelConfig(dim=256, heads=4, **swan_layers(8, window=128, train_length=512))

- :func:`rope_nope_layers`: Yang et al., "Rope to Nope and Back Again: A New Hybrid Attention
  Strategy" (2025): RoPE layers (sliding-window ones with ``window``) interleaved with a full
  NoPE layer every ``every`` layers, the NoPE layers carrying the long-range retrieval.
- :func:`swan_layers`: Puvvada et al., "SWAN-GPT: An Efficient and Scalable Approach for
  Long-Context Language Modeling" (2025): sliding-window RoPE layers interleaved with global NoPE
  layers whose scores are scaled logarithmically past ``train_length`` (:class:`attnkit.positional.LogScaling`).

The layer pattern is ``every - 1`` local layers, then one global layer, repeated; the last layer of
a stack whose length ``every`` does not divide is a local one.
"""
from __future__ import annotations

from ..validation import check_int


def _pattern(layers: int, every: int) -> str:
    check_int("layers", layers)
    check_int("every", every)
    return "".join("G" if (i + 1) % every == 0 else "L" for i in range(layers))


def _local(window: int | None) -> dict:
    if window is None:
        return {"mechanism": "softmax", "rope": True}
    check_int("window", window)
    return {"mechanism": "sliding_window", "rope": True, "window": window}


def rope_nope_layers(layers: int, *, window: int | None = None, every: int = 4) -> dict:
    """RoPE layers (sliding windows of ``window`` tokens when given) with a full NoPE layer every ``every``."""
    return {"schedule": _pattern(layers, every),
            "mixers": {"L": _local(window), "G": {"mechanism": "softmax", "rope": False}}}


def swan_layers(layers: int, *, window: int, train_length: int | None = None, every: int = 4) -> dict:
    """Sliding-window RoPE layers with a global NoPE layer every ``every``, scaled past ``train_length`` when given."""
    check_int("window", window)
    global_layer = {"mechanism": "softmax", "rope": False}
    if train_length is not None:
        global_layer["log_scaling"] = train_length
    return {"schedule": _pattern(layers, every), "mixers": {"L": _local(window), "G": global_layer}}
