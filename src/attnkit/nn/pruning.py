"""Head importance and pruning, from Michel, Levy & Neubig, "Are Sixteen Heads Really
Better than One?" (2019).

Every head ``h`` gets a mask variable ``xi_h`` multiplying its output (``xi = 1``
is the unchanged model). The importance of a head is the expected sensitivity
of the loss to its mask,

    I_h = E_x | dL(x) / d xi_h |,

estimated here over the given batches (each batch's loss gives one sample,
so batches of one example are the paper's estimator exactly). Scores are
normalised per layer by their l2 norm, as the paper does before comparing
heads across layers. Pruning then removes the least important heads first:
:func:`mask_heads` zeroes ``head_mask`` entries (any :class:`Attention`),
:func:`prune_heads` removes a multi-head layer's heads from its weights.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from .attention import Attention


def attention_layers(model: nn.Module) -> dict[str, Attention]:
    """The :class:`Attention` layers of ``model`` by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Attention)}


def head_importance(model: nn.Module, batches: Iterable, loss_fn: Callable[[nn.Module, object], torch.Tensor],
                    *, normalise: bool = True) -> dict[str, torch.Tensor]:
    """``I_h = mean over batches of |dL/dxi_h|`` for every head of every Attention layer.

    ``loss_fn(model, batch)`` returns a scalar loss. The model's parameters get
    no gradient; existing head masks are kept (a masked head scores 0).
    """
    layers = attention_layers(model)
    if not layers:
        raise ValueError("model has no attnkit.nn.Attention layers to score")
    saved = {name: layer.head_mask for name, layer in layers.items()}
    scores = {name: torch.zeros(layer.heads) for name, layer in layers.items()}
    count = 0
    try:
        for name, layer in layers.items():
            base = saved[name] if saved[name] is not None else torch.ones(layer.heads)
            layer.head_mask = base.detach().clone().requires_grad_(True)
        for batch in batches:
            loss = loss_fn(model, batch)
            if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                raise TypeError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
            grads = torch.autograd.grad(loss, [layer.head_mask for layer in layers.values()])
            for name, g in zip(layers, grads):
                scores[name] += g.detach().abs().float()
            count += 1
    finally:
        for name, layer in layers.items():
            layer.head_mask = saved[name]
    if count == 0:
        raise ValueError("batches is empty; head importance needs at least one batch")
    scores = {name: s / count for name, s in scores.items()}
    if normalise:
        scores = {name: s / s.norm().clamp_min(1e-20) for name, s in scores.items()}
    return scores


def pruning_order(scores: dict[str, torch.Tensor]) -> list[tuple[str, int]]:
    """All heads ``(layer, head)``, least important first (ties broken by position)."""
    heads = [(float(s[h]), name, h) for name, s in scores.items() for h in range(len(s))]
    return [(name, h) for _, name, h in sorted(heads, key=lambda t: t[0])]


def mask_heads(model: nn.Module, heads: Iterable[tuple[str, int]]) -> None:
    """Set ``head_mask`` to 0 for the given ``(layer name, head)`` pairs (others keep their mask)."""
    layers = attention_layers(model)
    for name, h in heads:
        if name not in layers:
            raise ValueError(f"no Attention layer named {name!r}; layers are {sorted(layers)}")
        layer = layers[name]
        if not 0 <= h < layer.heads:
            raise ValueError(f"head {h} out of range for layer {name!r} with {layer.heads} heads")
        if layer.head_mask is None:
            layer.head_mask = torch.ones(layer.heads)
        layer.head_mask = layer.head_mask.clone()
        layer.head_mask[h] = 0.0


def prune_heads(layer: Attention, heads: Iterable[int]) -> None:
    """Remove heads from a multi-head layer's projections (the model gets smaller and faster).

    Needs ``kv_heads == heads`` (a removed query head takes its key/value head
    with it) and keeps at least one head.
    """
    if type(layer) is not Attention:
        raise TypeError(f"prune_heads works on plain attnkit.nn.Attention layers, got {type(layer).__name__}; "
                        f"use mask_heads for other layers")
    if layer.kv_heads != layer.heads:
        raise ValueError(f"prune_heads needs kv_heads == heads, got kv_heads={layer.kv_heads}, heads={layer.heads}; "
                         f"use mask_heads for grouped layers")
    drop = sorted(set(heads))
    if any(not 0 <= h < layer.heads for h in drop):
        raise ValueError(f"heads {drop} out of range for a layer with {layer.heads} heads")
    keep = [h for h in range(layer.heads) if h not in drop]
    if not keep:
        raise ValueError("cannot prune every head of a layer")
    D = layer.head_dim
    rows = torch.tensor([h * D + i for h in keep for i in range(D)])
    for name in ("q_proj", "k_proj", "v_proj"):
        setattr(layer, name, _take(getattr(layer, name), rows, dim=0))
    layer.out_proj = _take(layer.out_proj, rows, dim=1)
    if layer.head_mask is not None:
        layer.head_mask = layer.head_mask[keep]
    layer.heads = layer.kv_heads = len(keep)


def _take(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    w = linear.weight.index_select(dim, index)
    out = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None, dtype=w.dtype, device=w.device)
    with torch.no_grad():
        out.weight.copy_(w)
        if linear.bias is not None:
            out.bias.copy_(linear.bias if dim == 1 else linear.bias.index_select(0, index))
    return out
