"""Turning the mask a Hugging Face model passes into what an attnkit mechanism takes.

transformers hands an attention function a 4-D mask ``(B, 1|H, Nq, Nk)`` (boolean,
True = attend, or additive float) or ``None`` and then relies on
``module.is_causal``. Mechanisms that take a mask get it as is. Mechanisms that
take no mask (``spec.supports_mask`` is False, e.g. recurrent ones) can only
run a mask that says nothing beyond "all keys" or "causal"; anything else
(padding, windows) is refused with a ValueError, never dropped.
"""
from __future__ import annotations

import torch

from ..kernels.positions import causal_mask


def allowed_pairs(mask: torch.Tensor) -> torch.Tensor:
    """Boolean view of a mask: True where a query may attend to a key."""
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2


def reduce_for_maskless(mechanism: str, mask: torch.Tensor, causal: bool) -> bool:
    """The ``causal`` flag that says everything ``mask`` says, or a ValueError.

    A float mask must be 0 where it allows attention (a bias would be lost);
    the allowed pattern must be all pairs, or the bottom-right causal triangle.
    """
    allowed = allowed_pairs(mask)
    if mask.is_floating_point() and bool((mask.masked_select(allowed) != 0).any()):
        raise ValueError(
            f"mechanism {mechanism!r} takes no mask, and this attention_mask adds a score bias; "
            "use a mechanism that takes a mask (e.g. 'softmax')"
        )
    if bool(allowed.all()):
        return causal
    Nq, Nk = allowed.shape[-2:]
    if bool((allowed == causal_mask(Nq, Nk, allowed.device)).all()):
        return True
    raise ValueError(
        f"mechanism {mechanism!r} takes no mask, but this attention_mask hides keys beyond causality "
        "(padding or a window): run without padding (batch of one, or equal lengths), or use a "
        "mechanism that takes a mask (e.g. 'softmax')"
    )


def pad_queries_to_keys(query: torch.Tensor, key: torch.Tensor, mask):
    """Run ``Nq < Nk`` causal attention as causal self-attention over all ``Nk`` positions.

    With bottom-right alignment the last ``Nq`` outputs of causal self-attention
    depend only on the last ``Nq`` queries, so the first ``Nk - Nq`` query slots
    can hold anything finite; they take copies of the keys there (a realistic
    query, so feature maps never see degenerate inputs). The caller keeps the
    last ``Nq`` outputs.
    """
    extra = key.shape[2] - query.shape[2]
    fill = key[:, :, :extra].repeat_interleave(query.shape[1] // key.shape[1], dim=1)
    query = torch.cat([fill, query], dim=2)
    if mask is not None:
        pad = torch.ones(*mask.shape[:2], extra, mask.shape[3], dtype=torch.bool, device=mask.device)
        if mask.is_floating_point():
            pad = torch.zeros(pad.shape, dtype=mask.dtype, device=mask.device)
        mask = torch.cat([pad.expand(mask.shape[0], -1, -1, -1), mask], dim=2)
    return query, mask
