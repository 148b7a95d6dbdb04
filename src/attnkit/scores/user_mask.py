"""Folding a user's ``mask`` into scores and the boolean of attended pairs, the same way everywhere."""
from __future__ import annotations

import torch


def apply_mask(scores: torch.Tensor, allowed: torch.Tensor | None, mask: torch.Tensor | None):
    """``(scores, allowed)`` after ``mask``; ``allowed=None`` means every pair.

    A boolean mask narrows ``allowed``; an additive mask is added to the scores and
    its ``-inf`` entries leave ``allowed`` (so a fully masked row is all-false).
    """
    if mask is None:
        return scores, allowed
    if mask.dtype == torch.bool:
        return scores, mask if allowed is None else allowed & mask
    finite = ~torch.isneginf(mask)
    return scores + mask, finite if allowed is None else allowed & finite
