"""Folding a user's ``mask`` into scores and the boolean of attended pairs, the same way everywhere."""
from __future__ import annotations

import torch


def allowed_by(mask: torch.Tensor) -> torch.Tensor:
    """The pairs ``mask`` lets through: a boolean mask itself, an additive mask's entries other than ``-inf``."""
    return mask if mask.dtype == torch.bool else ~torch.isneginf(mask)


def apply_mask(scores: torch.Tensor, allowed: torch.Tensor | None, mask: torch.Tensor | None):
    """``(scores, allowed)`` after ``mask``; ``allowed=None`` means every pair.

    A boolean mask narrows ``allowed``; an additive mask is added to the scores and
    its ``-inf`` entries leave ``allowed`` (so a fully masked row is all-false).
    """
    if mask is None:
        return scores, allowed
    keep = allowed_by(mask)
    if mask.dtype != torch.bool:
        scores = scores + mask
    return scores, keep if allowed is None else allowed & keep
