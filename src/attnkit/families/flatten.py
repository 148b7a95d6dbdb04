"""FLatten: focused linear attention.

Han et al., "FLatten Transformer: Vision Transformer using Focused Linear
Attention" (2023). The focused function sharpens the ReLU feature map without
changing its norm,

    f_p(x) = |x'| / |x'^p| * x'^p,   x' = (relu(x) + 1e-6) / softplus(s)

(``p`` = ``focusing_factor``, 3 in the paper; ``s`` a learned per-channel scale,
the optional tensor input ``focus_scale`` ``(heads, head_dim)`` = ``softplus(s)``,
learned by ``attnkit.nn.inputs.linear.FocusScale``),
and attention is normalised linear attention as the paper's code computes it,
``f(q) (sum_j f(k_j)^T v_j / n) / (f(q) . mean_j f(k_j) + eps)`` with ``n``
the number of visible keys. ``scale`` multiplies q (it cancels up to ``eps``).
The rank-restoring depthwise convolution on V is added by the paper's block,
``attnkit.nn.FocusedLinearAttention``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..params import Param, TensorInput
from ..validation import check_float, check_tensor
from ..builders.linear_pipeline import register_linear_mechanism

PAPER = "FLatten Transformer: Vision Transformer using Focused Linear Attention"


def focused(x: torch.Tensor, p: float, focus_scale) -> torch.Tensor:
    x = F.relu(x) + 1e-6
    if focus_scale is not None:
        x = x / focus_scale[:, None, :]
    xp = x**p
    return xp * (x.norm(dim=-1, keepdim=True) / xp.norm(dim=-1, keepdim=True))


def flatten_prepare(q, k, v, *, scale, focusing_factor, eps, focus_scale=None):
    check_float("focusing_factor", focusing_factor, positive=True)
    check_float("eps", eps, minimum=0)
    if focus_scale is not None:
        check_tensor("focus_scale", focus_scale, (q.shape[1], q.shape[-1]), q, what="(heads, head_dim) positive scales")
    return focused(q * scale, focusing_factor, focus_scale), focused(k, focusing_factor, focus_scale), v, None


def flatten_inputs(q, k, v, generator):
    s = 0.1 * torch.randn(q.shape[1], q.shape[-1], generator=generator, dtype=torch.float64)  # near the init s = 0
    return {"focus_scale": F.softplus(s).to(q.dtype)}


register_linear_mechanism(
    "flatten",
    family="linear",
    papers=(PAPER,),
    prepare=flatten_prepare,
    normalise=True,
    eps_param="eps",
    params={
        "focusing_factor": Param(3.0, float, "focusing power p of the feature map (the paper uses 3)", low=0, low_open=True),
        "eps": Param(1e-6, float, "added to the normaliser", low=0),
    },
    tensor_inputs=flatten_inputs,
    inputs={"focus_scale": TensorInput("(H, Dk)", "positive per-channel scales applied before the focusing power", required=False)},
    summary="FLatten focused linear attention: norm-preserving x^p sharpening of relu features",
)
