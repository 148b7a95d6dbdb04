"""Attention-weight dropout for the layers: the ``dropout=`` argument, checked once, applied while training.

Every layer whose mechanism forms softmax weights takes ``dropout=`` with the
meaning of :class:`attnkit.nn.Attention`'s (and SDPA's ``dropout_p``): while
the layer is training (``layer.train()``), each attention weight is zeroed with
probability ``dropout`` and the others are scaled by ``1 / (1 - dropout)``; in
eval mode nothing is dropped, and the layer equals the same layer built with
``dropout=0``. Layers that hand their weights to :func:`attnkit.attention` pass
``dropout_p=`` (:func:`dropout_p`); layers that form the weights themselves
call :func:`drop_weights` on them before weighing the values.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import MechanismSpec


def check_dropout(dropout) -> float:
    """``dropout`` as a float in [0, 1), or a ValueError naming it."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
    return float(dropout)


def check_dropout_support(spec: MechanismSpec, dropout: float, form: str | None = None) -> None:
    """Refuse ``dropout > 0`` for a mechanism whose default form (or ``form``) applies no attention-weight dropout."""
    forms = set(spec.default_order) if form is None else {form}
    if dropout and not forms & spec.dropout_forms:
        which = "default form" if form is None else f"form {form!r}"
        raise ValueError(f"dropout: mechanism {spec.name!r}'s {which} applies no attention-weight dropout; "
                         "use dropout=0.0 or mechanism='softmax'")


def dropout_p(layer: torch.nn.Module) -> float:
    """The ``dropout_p`` of the layer's :func:`attnkit.attention` calls: its ``dropout`` while training, else 0."""
    return layer.dropout if layer.training else 0.0


def drop_weights(layer: torch.nn.Module, weights: torch.Tensor) -> torch.Tensor:
    """``weights`` with the layer's attention-weight dropout applied (only while training)."""
    return F.dropout(weights, layer.dropout, training=True) if layer.dropout and layer.training else weights
