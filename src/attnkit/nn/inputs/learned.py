"""Generic learned producers of a mechanism's extra tensor inputs, for mechanisms with no input module.

Per-token inputs are produced from the hidden state by a learned projection,
squashed into the range of the example the mechanism's ``spec.tensor_inputs``
gives ((0, 1) -> sigmoid, <= 0 -> -softplus, >= 0 -> softplus); other tensor
inputs become learned parameters initialised from the example.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LearnedTensorInputs(nn.Module):
    """Learned producers of a mechanism's extra tensor inputs."""

    def __init__(self, spec, d_model: int, heads: int, kv_heads: int, qk_dim: int, v_dim: int, seq_len: int):
        super().__init__()
        self.per_token = nn.ModuleDict()
        self.fixed = nn.ParameterDict()
        self.squash: dict[str, str] = {}
        self.shapes: dict[str, tuple] = {}
        if spec.tensor_inputs is None:
            return
        g = torch.Generator().manual_seed(0)
        q = torch.randn(1, heads, seq_len, qk_dim, generator=g)
        k = torch.randn(1, kv_heads, seq_len, qk_dim, generator=g)
        v = torch.randn(1, kv_heads, seq_len, v_dim, generator=g)
        for name, example in spec.tensor_inputs(q, k, v, g).items():
            if name in spec.tensor_inputs_per_token:
                lead, rest = example.shape[1], tuple(example.shape[3:])
                self.shapes[name] = (lead, rest)
                self.per_token[name] = nn.Linear(d_model, lead * math.prod(rest))
                self.squash[name] = _range_of(example)
            else:
                self.fixed[name] = nn.Parameter(example.detach().clone().float())

    def forward(self, x: torch.Tensor, q=None, k=None, v=None) -> dict:
        B, L, _ = x.shape
        out = dict(self.fixed.items())
        for name, proj in self.per_token.items():
            lead, rest = self.shapes[name]
            t = proj(x).view(B, L, lead, *rest).movedim(2, 1)
            out[name] = _SQUASH[self.squash[name]](t)
        return out


_SQUASH = {"unit": torch.sigmoid, "nonpositive": lambda t: -F.softplus(t), "nonnegative": F.softplus,
           "any": lambda t: t}


def _range_of(example: torch.Tensor) -> str:
    lo, hi = float(example.min()), float(example.max())
    if lo >= 0 and hi <= 1:
        return "unit"
    if hi <= 0:
        return "nonpositive"
    if lo >= 0:
        return "nonnegative"
    return "any"
