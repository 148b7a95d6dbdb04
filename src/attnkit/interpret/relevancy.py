"""Gradient-weighted relevancy: Chefer, Gur & Wolf, "Generic Attention-model Explainability for
Interpreting Bi-Modal and Encoder-Decoder Transformers" (ICCV 2021).

Each attention layer contributes its head-averaged, gradient-weighted map
``A_bar = E_h[(grad A * A)^+]`` (the gradient of the explained output with respect to the
attention weights, record them with ``attnkit.capture(model, grad=True)``). Relevancy maps
start at the identity (each token explains itself) and are updated layer by layer, in
forward order:

- self-attention among the explained tokens ``s``:  ``R_ss += A_bar R_ss``,
  ``R_sq += A_bar R_sq`` (rules 6-7);
- self-attention among the context tokens ``q`` (an encoder): ``R_qq += A_bar R_qq``;
- cross-attention, ``s`` attending to ``q``:  ``R_sq += R_ss_bar^T A_bar R_qq_bar`` (rule 11), where
  ``R_xx_bar`` is ``R_xx - I`` with rows normalised to sum to one, plus ``I`` (rules 8-9).

Row ``i`` of ``R_ss`` (``R_sq``) is the relevance of each explained (context) token for the
output at token ``i``.
"""
from __future__ import annotations

import torch

KINDS = ("self", "context", "cross")


def gradient_weighted(weights: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``E_h[(grad * A)^+]``: ``(B, H, Nq, Nk) -> (B, Nq, Nk)``."""
    if grad is None:
        raise ValueError("an attention map has no gradient: record with attnkit.capture(model, grad=True) and call "
                         "backward() on the explained output first")
    if grad.shape != weights.shape:
        raise ValueError(f"grad has shape {tuple(grad.shape)}, weights {tuple(weights.shape)}")
    return (grad * weights).clamp(min=0).mean(dim=1)


def self_relevancy(weights, grads) -> torch.Tensor:
    """``R_ss (B, N, N)`` of a stack of self-attention layers (weights and their gradients, forward order)."""
    if not weights or len(weights) != len(grads):
        raise ValueError(f"need one gradient per attention map, got {len(weights)} maps and {len(grads)} gradients")
    relevance = None
    for a, g in zip(weights, grads):
        cam = gradient_weighted(a, g)
        if relevance is None:
            relevance = _eye_like(cam)
        relevance = relevance + cam @ relevance
    return relevance


def relevancy(steps) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(R_ss, R_sq)`` of a model with self-, context- and cross-attention layers.

    ``steps``: ``(kind, weights, grad)`` in forward order, ``kind`` one of ``"self"`` (the
    explained tokens attend to themselves), ``"context"`` (the context tokens attend to
    themselves) and ``"cross"`` (explained tokens attend to the context). ``R_sq`` is None
    when there is no cross-attention.
    """
    r_ss = r_qq = r_sq = None
    for index, (kind, a, g) in enumerate(steps):
        if kind not in KINDS:
            raise ValueError(f"steps[{index}]: kind must be one of {KINDS}, got {kind!r}")
        cam = gradient_weighted(a, g)
        if kind == "context":
            r_qq = _eye_like(cam) if r_qq is None else r_qq
            r_qq = r_qq + cam @ r_qq
            continue
        B, Ns = cam.shape[0], cam.shape[1]
        r_ss = _eye(B, Ns, cam) if r_ss is None else r_ss
        if kind == "self":
            r_sq = None if r_sq is None else r_sq + cam @ r_sq
            r_ss = r_ss + cam @ r_ss
        else:
            Nq = cam.shape[2]
            r_qq = _eye(B, Nq, cam) if r_qq is None else r_qq
            r_sq = torch.zeros(B, Ns, Nq, dtype=cam.dtype, device=cam.device) if r_sq is None else r_sq
            r_sq = r_sq + _residual_normalised(r_ss).transpose(-1, -2) @ cam @ _residual_normalised(r_qq)
    if r_ss is None:
        raise ValueError("steps has no self- or cross-attention of the explained tokens")
    return r_ss, r_sq


def _residual_normalised(r: torch.Tensor) -> torch.Tensor:
    """``(R - I)`` with rows normalised to sum to one, plus ``I`` (rows without relevance stay ``I``)."""
    eye = _eye_like(r)
    hat = r - eye
    total = hat.sum(dim=-1, keepdim=True)
    return hat / torch.where(total != 0, total, torch.ones_like(total)) + eye


def _eye(batch: int, n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(n, dtype=like.dtype, device=like.device).expand(batch, n, n).clone()


def _eye_like(square: torch.Tensor) -> torch.Tensor:
    return _eye(square.shape[0], square.shape[-1], square)
