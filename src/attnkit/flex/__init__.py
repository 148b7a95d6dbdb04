"""FlexAttention's user functions (``score_mod``, ``mask_mod``, ``BlockMask``) on attnkit's block-sparse kernel."""
from .api import flex_attention
from .reference import flex_reference

__all__ = ["flex_attention", "flex_reference"]
