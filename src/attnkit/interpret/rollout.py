"""Attention rollout: Abnar & Zuidema, "Quantifying Attention Flow in Transformers" (2020).

Each layer's attention, averaged over heads, is mixed with the residual connection,
``A^ = 0.5 A + 0.5 I`` (rows renormalised to sum to one), and the layers are chained::

    rollout = A^_L A^_(L-1) ... A^_1

so ``rollout[i, j]`` is how much of input token ``j`` reaches output token ``i`` when
attention is read as the proportion of information each token takes from the others. Rows
sum to one.
"""
from __future__ import annotations

import torch


def layer_matrices(weights, *, residual: bool = True, head_reduce: str = "mean") -> list[torch.Tensor]:
    """Per layer, the ``(B, N, N)`` attention the paper's graph uses: heads reduced, the residual
    mixed in (``0.5 A + 0.5 I``), rows normalised to sum to one.

    ``weights``: per layer ``(B, H, N, N)`` (e.g. ``attnkit.capture``'s ``rec.weights()``) or
    ``(B, N, N)``; non-negative (softmax-family weights), self-attention (square).
    """
    if not isinstance(weights, (list, tuple)) or not weights:
        raise ValueError("weights must be a non-empty list of per-layer (B, H, N, N) attention weights")
    if head_reduce not in ("mean", "max", "min"):
        raise ValueError(f"head_reduce must be 'mean', 'max' or 'min', got {head_reduce!r}")
    out = []
    for i, w in enumerate(weights):
        if not isinstance(w, torch.Tensor) or w.ndim not in (3, 4) or w.shape[-1] != w.shape[-2]:
            raise ValueError(f"weights[{i}] must be a (B, H, N, N) or (B, N, N) tensor of self-attention weights, "
                             f"got {getattr(w, 'shape', type(w).__name__)}")
        if w.shape != weights[0].shape:
            raise ValueError(f"weights[{i}] has shape {tuple(w.shape)}, weights[0] {tuple(weights[0].shape)}: "
                             "every layer must attend over the same tokens")
        if (w < 0).any():
            raise ValueError(f"weights[{i}] has negative entries: rollout and flow read attention as proportions, "
                             "so they need non-negative weights (softmax family, patterns, normalised linear maps)")
        if w.ndim == 3:
            a = w
        elif head_reduce == "mean":
            a = w.mean(dim=1)
        else:
            a = getattr(w, head_reduce)(dim=1).values
        if residual:
            a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        total = a.sum(dim=-1, keepdim=True)
        out.append(a / torch.where(total > 0, total, torch.ones_like(total)))
    return out


def rollout(weights, *, residual: bool = True, head_reduce: str = "mean") -> torch.Tensor:
    """``(B, N, N)``: row ``i`` is how much each input token reaches output token ``i`` (rows sum to one).

    ``weights`` are per layer, first layer first (see :func:`layer_matrices`).
    """
    layers = layer_matrices(weights, residual=residual, head_reduce=head_reduce)
    joint = layers[0]
    for a in layers[1:]:
        joint = a @ joint
    return joint
