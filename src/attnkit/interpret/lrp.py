"""AttnLRP: Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
Transformers" (ICML 2024).

Relevance starts as the explained output and flows back to the input tokens, each operation
passing on what it received by a rule. Written as gradient times input (the relevance of a
tensor ``x`` is ``x * g`` for the ``g`` the modified backward pass gives it), the rules are:

- linear maps (projections, residual sums, RoPE's rotation): the epsilon rule, which for a
  map without bias is the plain gradient; a bias keeps the relevance it is given;
- element-wise non-linearities ``y = f(x)`` (GELU, SiLU): the identity rule, ``R_x = R_y``;
- normalisations (RMSNorm, LayerNorm): the identity rule through the division, i.e. the
  standard deviation is a constant of the backward pass;
- products of two activations (``q k^T``, ``A v``, gates): the uniform rule, each factor
  gets half;
- softmax ``s = softmax(x)``: ``R_x = x (R_s - s sum_j R_s,j)`` (the paper's Proposition
  3.1, which is the plain gradient). Softmax is shift-invariant, so part of ``R_s`` is
  absorbed (the paper's bias term); :func:`attn_lrp` reports how much.

With ``softmax_relevance=False`` the attention weights are constants of the backward pass
(no relevance enters ``q`` and ``k``: Ali et al.'s "conservative propagation"), and a
model without biases conserves relevance exactly.

The rules act through a ``TorchFunctionMode`` on the torch functions the model calls, and
the attention runs on its materialised weights (``attnkit.capture(grad=True)``); any
module built from attnkit layers, torch's norms and activations is covered.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..capture import capture

_BILINEAR = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.mul, torch.Tensor.mul,
             torch.Tensor.__mul__, torch.Tensor.__rmul__}
_ACTIVATIONS = {F.gelu, F.silu}


@dataclass
class Relevance:
    """``tokens (B, N)``: the relevance of each input token; ``explained``: the explained output;
    ``absorbed``: relevance the softmax rule's bias term kept (0 with ``softmax_relevance=False``);
    ``tokens.sum() + absorbed`` equals ``explained`` in a model without biases."""

    tokens: torch.Tensor
    explained: float
    absorbed: float


class _Half(torch.autograd.Function):
    """Identity forward; the backward pass halves (the uniform rule for a product of two activations)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return 0.5 * g


class _IdentityRule(torch.autograd.Function):
    """``y = f(x)`` forward; backward passes the relevance on unchanged: ``g_x = g_y y / x``."""

    @staticmethod
    def forward(ctx, x, fn, kwargs):
        y = fn(x, **kwargs)
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        safe = torch.where(x == 0, torch.ones_like(x), x)
        return torch.where(x == 0, torch.zeros_like(g), g * y / safe), None, None


def _activation(t) -> bool:
    return isinstance(t, torch.Tensor) and t.requires_grad and not isinstance(t, torch.nn.Parameter)


class _Rules(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _BILINEAR and len(args) == 2 and _activation(args[0]) and _activation(args[1]):
            return func(_Half.apply(args[0]), _Half.apply(args[1]), **kwargs)
        if func in _ACTIVATIONS:
            return _IdentityRule.apply(args[0], func, {**dict(zip(("approximate",), args[1:])), **kwargs})
        if func is F.rms_norm:
            return _rms_norm(*args, **kwargs)
        if func is F.layer_norm:
            return _layer_norm(*args, **kwargs)
        return func(*args, **kwargs)


def _rms_norm(x, normalized_shape, weight=None, eps=None):
    dims = tuple(range(-len(normalized_shape), 0))
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    rms = (x.pow(2).mean(dim=dims, keepdim=True) + eps).sqrt().detach()
    y = x / rms
    return y * weight if weight is not None else y


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = tuple(range(-len(normalized_shape), 0))
    centred = x - x.mean(dim=dims, keepdim=True)
    std = (centred.pow(2).mean(dim=dims, keepdim=True) + eps).sqrt().detach()
    y = centred / std
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


def attn_lrp(model: torch.nn.Module, forward, *, embedding: torch.nn.Module,
             softmax_relevance: bool = True) -> Relevance:
    """Explain the scalar ``forward()`` returns (e.g. ``lambda: model(tokens)[0, -1, c]``).

    ``embedding``: the module whose output is the input representation (e.g. ``model.embed``);
    a token's relevance is the sum over features of that output times its modified gradient.
    """
    if not isinstance(embedding, torch.nn.Module):
        raise TypeError(f"embedding must be the model's input embedding module, got {type(embedding).__name__}")
    kept = []
    hook = embedding.register_forward_hook(lambda module, args, out: kept.append(out))
    edit = None if softmax_relevance else (lambda module, w: w.detach())
    try:
        with torch.enable_grad(), capture(model, grad=softmax_relevance, edit=edit) as rec, _Rules():
            explained = forward()
    finally:
        hook.remove()
    if not isinstance(explained, torch.Tensor) or explained.numel() != 1:
        raise ValueError("forward() must return the one scalar to explain (e.g. a logit)")
    if len(kept) != 1:
        raise ValueError(f"the embedding module ran {len(kept)} times during forward(); expected once")
    weights = [r.weights for r in rec if softmax_relevance and r.weights is not None and r.weights.requires_grad]
    grads = torch.autograd.grad(explained, [kept[0], *weights], allow_unused=True)
    tokens = (kept[0] * grads[0]).sum(dim=-1).detach()
    absorbed = sum(_absorbed(w.detach(), g) for w, g in zip(weights, grads[1:]) if g is not None)
    return Relevance(tokens, float(explained.detach()), float(absorbed))


def _absorbed(weights: torch.Tensor, grad: torch.Tensor) -> float:
    """Relevance the softmax rule keeps: what reaches the weights minus what reaches the scores.

    With ``x = log s + c`` per row and the scores' gradient summing to zero over a row,
    ``sum x g_x = sum log(s) g_x``, so only the weights and their gradient are needed.
    """
    into = (weights * grad).sum()
    g_scores = weights * (grad - (weights * grad).sum(dim=-1, keepdim=True))
    logs = torch.where(weights > 0, weights.log(), torch.zeros_like(weights))
    return float(into - (logs * g_scores).sum())
