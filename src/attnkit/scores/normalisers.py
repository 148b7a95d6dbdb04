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
- ``"ratio"``: ``w_ij = phi(s_ij) / sum_j phi(s_ij)`` (softplus + l1);
- ``"standardise"``: ``w_ij = gain_h (s_ij - mean_i) / sqrt(var_i + eps) + shift_h``, the
  mean and (population) variance taken over the allowed keys of row i (Richter &
  Wattenhofer's normalised attention). The chunked kernel merges per-chunk means
  and centred sums (Chan et al.'s parallel variance), so it stays one pass.
Masked pairs always get weight exactly 0, and a row with nothing allowed is 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Normaliser:
    name: str
    kind: str  # "exp" | "sum" | "ratio" | "standardise"
    phi: Callable[[torch.Tensor], torch.Tensor] | None = None  # for "sum" / "ratio"
    signed: bool = False  # for "exp": Cog attention's signed weights
    gain: torch.Tensor | None = None  # for "standardise": per head (H,), default 1
    shift: torch.Tensor | None = None  # for "standardise": per head (H,), default 0
    eps: float = 1e-6  # for "standardise"

    def affine(self, centred: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """``gain * centred + shift * total`` with per-head gain/shift broadcast over ``(B, H, ...)``."""
        x = centred * self.gain.to(centred.dtype)[:, None, None] if self.gain is not None else centred
        if self.shift is not None:
            x = x + self.shift.to(total.dtype)[:, None, None] * total
        return x

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
        if self.kind == "standardise":
            return self._standardised(scores, allowed)
        w = self.phi(scores)
        if allowed is not None:
            w = w.masked_fill(~allowed, 0.0)
        if self.kind == "ratio":
            denom = w.sum(dim=-1, keepdim=True)
            w = w / torch.where(denom > 0, denom, torch.ones_like(denom))
        return w

    def _standardised(self, scores, allowed):
        if allowed is None:
            ones = torch.ones_like(scores)
        else:
            ones = allowed.to(scores.dtype)
            scores = scores.masked_fill(~allowed, 0.0)  # masked scores may be -inf
        n = ones.sum(dim=-1, keepdim=True).clamp_min(1.0)
        mean = scores.sum(dim=-1, keepdim=True) / n
        centred = (scores - mean) * ones
        var = (centred * centred).sum(dim=-1, keepdim=True) / n
        return self.affine(centred / torch.sqrt(var + self.eps), ones)


SOFTMAX = Normaliser("softmax", "exp")
