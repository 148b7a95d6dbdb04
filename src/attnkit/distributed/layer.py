"""How ``attnkit.nn.Attention(context_parallel=group, strategy=...)`` runs its attention."""
from __future__ import annotations

import torch
import torch.distributed as dist

from .allgather import allgather_attention
from .burst import burst_attention
from .lasp2 import lasp2_attention
from .layout import Layout
from .ring import ring_attention
from .ulysses import ulysses_attention

STRATEGIES = ("ring", "burst", "ulysses", "lasp2", "allgather")
ALLGATHER_MECHANISMS = ("softmax", "sliding_window")
TILED = ("ring", "burst")
# How a model runs its layers across ranks (ModelConfig.context_parallel): linear-recurrence layers always run
# LASP-2; the scheme names what the other layers run ("lasp2h": all-gather, LASP-2H's softmax layers).
SCHEMES = ("lasp2h", "ring", "burst", "ulysses")


def layer_strategy(scheme: str, spec) -> str:
    """The strategy of one layer of a model whose layers split the sequence with ``scheme``."""
    if scheme not in SCHEMES:
        raise ValueError(f"context_parallel must be one of {SCHEMES}, got {scheme!r}")
    if "recurrence" in spec.extra:
        return "lasp2"
    tiled = spec.name == "sliding_window" or "softmax_score_mod" in spec.extra
    if scheme == "lasp2h" and spec.name in ALLGATHER_MECHANISMS:
        return "allgather"
    if scheme in ("lasp2h", *TILED) and tiled:
        return "ring" if scheme == "lasp2h" else scheme
    return "ulysses"


def model_layout(strategies: list[str]) -> str:
    """One layout for every layer of a model: contiguous when a layer needs it (LASP-2, all-gather), else zigzag."""
    return "contiguous" if {"lasp2", "allgather"} & set(strategies) else "zigzag"


class ContextParallel:
    """A strategy, a layout and a group; called with this rank's q, k, v shards.

    Default strategy: ``lasp2`` for mechanisms on the shared linear recurrence, ``ring`` for
    softmax, its score modifiers (ALiBi, soft-capping, T5 buckets, ...) and sliding windows,
    ``ulysses`` (any mechanism) otherwise. ``burst`` runs what ``ring`` runs. ``allgather`` (softmax,
    sliding windows) with the contiguous layout beside ``lasp2`` layers is LASP-2H.
    """

    def __init__(self, group, strategy: str | None, layout: str | None, spec, params: dict):
        if group is True:
            group = None  # the default group
        elif group is not None and not isinstance(group, dist.ProcessGroup):
            raise TypeError(f"context_parallel must be a torch.distributed ProcessGroup or True (the default "
                            f"group), got {type(group).__name__}")
        recurrent = "recurrence" in spec.extra
        tiled = spec.name == "sliding_window" or "softmax_score_mod" in spec.extra
        if strategy is None:
            strategy = "lasp2" if recurrent else "ring" if tiled else "ulysses"
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if strategy in TILED and not tiled:
            raise ValueError(f"{strategy} attention runs softmax, sliding windows and softmax with a score modifier "
                             f"on positions (alibi, softcap, t5, ...), not {spec.name!r}; use strategy='ulysses'")
        if strategy == "allgather" and spec.name not in ALLGATHER_MECHANISMS:
            raise ValueError(f"allgather attention runs {ALLGATHER_MECHANISMS}, not {spec.name!r}; use strategy='ulysses'")
        if strategy == "lasp2" and not recurrent:
            raise ValueError(f"lasp2 runs the linear-recurrence mechanisms, not {spec.name!r}")
        if strategy == "ulysses" and spec.tensor_names:
            raise ValueError(f"{spec.name!r} learns per-token inputs that ulysses would have to re-shard; "
                             f"use strategy='lasp2' or 'ring'")
        layout = layout or ("contiguous" if strategy in ("lasp2", "allgather") else "zigzag")
        if strategy == "lasp2" and layout != "contiguous":
            raise ValueError("lasp2 needs the contiguous layout (each rank's tokens follow the previous rank's)")
        self.group, self.strategy, self.layout, self.name = group, strategy, layout, spec.name
        self.make_mod, self.tensor_names = spec.extra.get("softmax_score_mod"), spec.tensor_names

    def positions(self, local_len: int, device):
        """Global positions of this rank's tokens."""
        size = dist.get_world_size(self.group)
        return Layout(self.layout, size, local_len * size).positions(dist.get_rank(self.group), device)

    def _window(self, causal: bool, params: dict):
        if self.name != "sliding_window":
            return None
        if not causal and params.get("border") != "clamp":
            raise ValueError(f"{self.strategy} attention runs a non-causal window cut at the ends; build the layer "
                             f"with border='clamp' (or use strategy='ulysses' for the shifted window)")
        return params["window"]

    def _score_mod(self, q, k, causal: bool, params: dict):
        """The mechanism's score modifier (global positions) and the tensors it reads."""
        if self.make_mod is None:
            return None, ()
        scale = params.get("scale") or q.shape[-1] ** -0.5
        mod = self.make_mod(q, k, causal=causal, scale=scale, **params)
        inputs = tuple(params[n] for n in self.tensor_names if isinstance(params.get(n), torch.Tensor))
        return mod, inputs

    def __call__(self, q, k, v, causal: bool, params: dict):
        if self.strategy in TILED:
            window = self._window(causal, params)
            mod, inputs = self._score_mod(q, k, causal, params)
            run = ring_attention if self.strategy == "ring" else burst_attention
            return run(q, k, v, group=self.group, layout=self.layout, causal=causal, window=window,
                       score_mod=mod, score_mod_inputs=inputs, scale=params.get("scale"))
        if self.strategy == "allgather":
            window = self._window(causal, params)
            return allgather_attention(q, k, v, group=self.group, layout=self.layout, causal=causal, window=window)
        if self.strategy == "lasp2":
            return lasp2_attention(q, k, v, self.name, group=self.group, causal=causal, **params)
        return ulysses_attention(q, k, v, self.name, group=self.group, layout=self.layout, causal=causal, **params)

    def __repr__(self) -> str:
        return f"context_parallel={self.strategy}/{self.layout}"
