"""Input modules: the layers that compute a mechanism's extra tensor inputs from hidden states.

A mechanism whose tensor inputs a layer must learn (per-token gates, step sizes,
learned features) has an input module here, found by the mechanism's name
(:func:`register_input_module` adds one for a mechanism registered elsewhere):
``input_module(name, dim=, heads=, kv_heads=, head_dim=, params=)`` builds it (``params``: the
layer's scalar parameters of the mechanism, read by the modules sized by them), and its
``forward(x, q, k, v)`` returns the dict of tensor inputs for this call (``x`` the
layer input ``(B, N, dim)`` of the new tokens, ``q, k, v`` the projected heads;
per-token inputs cover the new tokens only, so incremental calls work unchanged).
Mechanisms never import this package: the layers own their inputs.

:class:`~.learned.LearnedTensorInputs` is the generic fallback for experiments
(learned projections squashed into the range of the spec's example inputs).
"""
from __future__ import annotations

import inspect
from functools import partial

from torch import nn

from .dma import DMAInputs
from .delta_rule import DeltaNetBeta, GatedDeltaNetGates, KDAGates
from .learned import LearnedTensorInputs
from .linear import FocusScale, GLAGate, Mamba2Gate, PerformerFeatures
from .log_linear import LogLinearGatedDeltaNetInputs, LogLinearInputs
from .nha import SlotGates
from .mosa import MoSARouter
from .nsa import NSAInputs
from .rat import RATGate
from .routing import RoutingCentroids
from .h3 import H3Filters
from .hyena import HyenaFilter
from .mamba import MambaInputs
from .head_temperature import HeadTemperature
from .path import PaTHInputs
from .rwkv import RWKV6Decay, RWKV7Inputs
from .rwkv4 import RWKV4Decay
from .seer import SeerGate
from .seer_decode import SeerDecodeGate
from .sparsek import SparseKScores
from .tra import TRAForget
from .neural_attention import NeuralScoreMLP
from .titans import TitansInputs

# mechanism name -> factory(dim, heads, kv_heads, head_dim) -> nn.Module
_FACTORIES = {
    "gla": lambda dim, heads, kv_heads, head_dim: GLAGate(dim, heads, head_dim),
    "mamba2": lambda dim, heads, kv_heads, head_dim: Mamba2Gate(dim, heads),
    "flatten": lambda dim, heads, kv_heads, head_dim: FocusScale(heads, head_dim),
    "performer": lambda dim, heads, kv_heads, head_dim: PerformerFeatures(head_dim),
    "deltanet": lambda dim, heads, kv_heads, head_dim: DeltaNetBeta(dim, heads),
    "gated_deltanet": lambda dim, heads, kv_heads, head_dim: GatedDeltaNetGates(dim, heads),
    "kda": lambda dim, heads, kv_heads, head_dim: KDAGates(dim, heads, head_dim),
    "log_linear_mamba2": lambda dim, heads, kv_heads, head_dim: LogLinearInputs(dim, heads),
    "log_linear_gated_deltanet": lambda dim, heads, kv_heads, head_dim: LogLinearGatedDeltaNetInputs(dim, heads, head_dim),
    "rat": lambda dim, heads, kv_heads, head_dim: RATGate(dim, heads, head_dim),
    "titans": lambda dim, heads, kv_heads, head_dim: TitansInputs(dim, heads, head_dim),
    "nha": SlotGates,
    "mosa": lambda dim, heads, kv_heads, head_dim: MoSARouter(dim, heads),
    "dma": lambda dim, heads, kv_heads, head_dim: DMAInputs(kv_heads, head_dim),
    "sparsek": lambda dim, heads, kv_heads, head_dim: SparseKScores(dim, kv_heads),
    "routing": lambda dim, heads, kv_heads, head_dim: RoutingCentroids(heads, head_dim),
    "routing_balanced": lambda dim, heads, kv_heads, head_dim: RoutingCentroids(heads, head_dim),
    "rwkv4": lambda dim, heads, kv_heads, head_dim: RWKV4Decay(heads, head_dim),
    "head_temperature": lambda dim, heads, kv_heads, head_dim: HeadTemperature(heads),
    "path": lambda dim, heads, kv_heads, head_dim: PaTHInputs(dim, heads, head_dim),
    "rwkv6": lambda dim, heads, kv_heads, head_dim: RWKV6Decay(dim, heads, head_dim),
    "rwkv7": lambda dim, heads, kv_heads, head_dim: RWKV7Inputs(dim, heads, head_dim),
    "mamba": lambda dim, heads, kv_heads, head_dim, v_dim=None: MambaInputs(dim, heads, head_dim, v_dim),
    "hyena": lambda dim, heads, kv_heads, head_dim: HyenaFilter(heads, head_dim),
    "h3": lambda dim, heads, kv_heads, head_dim: H3Filters(heads, head_dim),
    "seer_attention": lambda dim, heads, kv_heads, head_dim: SeerGate(heads, head_dim),
    "seer_attention_r": lambda dim, heads, kv_heads, head_dim: SeerDecodeGate(heads, kv_heads, head_dim),
    "tra": lambda dim, heads, kv_heads, head_dim: TRAForget(dim, kv_heads),
    "neural_attention": lambda dim, heads, kv_heads, head_dim: NeuralScoreMLP(heads, head_dim),
}

# mechanism name -> factory(dim, heads, kv_heads, head_dim, params): modules sized by the mechanism's parameters
_SIZED_FACTORIES = {
    "nsa": lambda dim, heads, kv_heads, head_dim, params: NSAInputs.for_layer(dim, heads, head_dim, params,
                                                                                        kv_heads=kv_heads),
}


def register_input_module(name: str, factory) -> None:
    """Give mechanism ``name`` an input module: ``factory(dim=, heads=, kv_heads=, head_dim=) -> nn.Module``."""
    if not callable(factory):
        raise TypeError(f"factory must be callable as factory(dim=, heads=, kv_heads=, head_dim=), got {factory!r}")
    if name in _FACTORIES or name in _SIZED_FACTORIES:
        raise ValueError(f"mechanism {name!r} already has an input module")
    _FACTORIES[name] = factory


def has_input_module(name: str) -> bool:
    """Whether mechanism ``name`` has an input module here."""
    return name in _FACTORIES or name in _SIZED_FACTORIES


def input_module(name: str, *, dim: int, heads: int, kv_heads: int, head_dim: int,
                 v_dim: int | None = None, params: dict | None = None) -> nn.Module:
    """The input module of mechanism ``name`` for a layer of this size; ValueError if it has none.

    ``v_dim``: the values' head dim when it differs from ``head_dim`` (q and k), e.g. Mamba-1's
    state size ``head_dim`` below its channel count ``v_dim``; only factories taking ``v_dim=``
    accept it (ValueError otherwise). ``params``: the mechanism's scalar parameters (its defaults
    where left out), for modules sized by them (NSA's compression blocks).
    """
    if name in _SIZED_FACTORIES:
        factory = partial(_SIZED_FACTORIES[name], params=dict(params or {}))
    elif name in _FACTORIES:
        factory = _FACTORIES[name]
    else:
        raise ValueError(f"mechanism {name!r} has no input module in attnkit.nn.inputs; "
                         f"mechanisms with one: {sorted({*_FACTORIES, *_SIZED_FACTORIES})}")
    if v_dim is None or v_dim == head_dim:
        return factory(dim=dim, heads=heads, kv_heads=kv_heads, head_dim=head_dim)
    if "v_dim" not in inspect.signature(factory).parameters:
        raise ValueError(f"the input module of {name!r} assumes values of head_dim {head_dim}; got v_dim={v_dim}")
    return factory(dim=dim, heads=heads, kv_heads=kv_heads, head_dim=head_dim, v_dim=v_dim)


__all__ = ["input_module", "has_input_module", "register_input_module", "LearnedTensorInputs", "SeerDecodeGate", "RWKV4Decay", "RWKV6Decay", "PaTHInputs", "HeadTemperature", "RWKV7Inputs", "MambaInputs", "HyenaFilter", "H3Filters", "GLAGate", "Mamba2Gate", "FocusScale",
           "PerformerFeatures", "DeltaNetBeta", "GatedDeltaNetGates", "KDAGates", "LogLinearInputs",
           "LogLinearGatedDeltaNetInputs", "RATGate", "TitansInputs", "SlotGates", "NSAInputs", "MoSARouter",
           "RoutingCentroids", "SeerGate", "TRAForget", "NeuralScoreMLP"]
