"""Mask functions ``(b, h, q_idx, kv_idx) -> bool`` (attention-gym style), composable with
``&``, ``|``, ``~``, and block layouts that turn them into block-sparse work."""
from .base import MaskMod, and_masks, causal_mask, full_mask, not_mask, or_masks, tensor_mask
from .layout import BlockLayout, build_layout

__all__ = ["MaskMod", "and_masks", "or_masks", "not_mask", "causal_mask", "full_mask", "tensor_mask",
           "BlockLayout", "build_layout"]
