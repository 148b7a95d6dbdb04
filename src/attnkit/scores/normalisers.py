"""Normalisers: the function that turns a row of scores into attention weights.

Each normaliser has two implementations that are tested against each other:
``weights(scores, allowed)`` works on whole rows (used by the float64
references), and the fields ``kind``/``phi`` tell the chunked online kernel
(:mod:`attnkit.kernels.chunked`) how to accumulate the same result one key
chunk at a time.

kinds:
- ``"exp"``: ``w_ij = sign_ij * exp(t(s_ij)) / sum_j exp(t(s_ij))`` with a running
  max (softmax: ``t = id``, no sign; Cog attention: ``t = |.|``, sign of s);
- ``"sum"``: ``w_ij = phi(s_ij)``, no row normalisation (sigmoid, ReLU);
- ``"ratio"``: ``w_ij = phi(s_ij) / sum_j phi(s_ij)`` (softplus + l1).
Masked pairs always get weight exactly 0, and a row with nothing allowed is 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Normaliser:
    name: str
    kind: str  # "exp" | "sum" | "ratio"
    phi: Callable[[torch.Tensor], torch.Tensor] | None = None  # for "sum" / "ratio"
    signed: bool = False  # for "exp": Cog attention's signed weights

    def weights(self, scores: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        """Whole-row weights, straight from the definition."""
        if self.kind == "exp":
            t = scores.abs() if self.signed else scores
            if allowed is not None:
                t = t.masked_fill(~allowed, float("-inf"))
            row_max = t.amax(dim=-1, keepdim=True)
            row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
            e = torch.exp(t - row_max)
            denom = e.sum(dim=-1, keepdim=True)
            w = e / torch.where(denom > 0, denom, torch.ones_like(denom))
            return w * torch.sign(scores) if self.signed else w
        w = self.phi(scores)
        if allowed is not None:
            w = w.masked_fill(~allowed, 0.0)
        if self.kind == "ratio":
            denom = w.sum(dim=-1, keepdim=True)
            w = w / torch.where(denom > 0, denom, torch.ones_like(denom))
        return w


SOFTMAX = Normaliser("softmax", "exp")
