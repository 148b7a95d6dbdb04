"""Dense softmax attention through ``torch.nn.functional.scaled_dot_product_attention``.

The fast path for plain softmax attention: SDPA picks the best kernel for the
device (flash / memory-efficient / math). attnkit adds only what SDPA does not
do by itself: bottom-right causal alignment when ``q_len != kv_len``, key
padding and combined masks, and zeros (not NaN) for fully masked rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .positions import causal_mask

# Devices whose SDPA kernels already return zeros (and finite gradients) for a query row
# with no allowed key, as torch 2.13's CPU kernels do; the conformance suite's
# fully-masked-row test checks this. Elsewhere attnkit guards the rows itself, at the cost
# of one pass over the mask.
_SDPA_ZEROES_DEAD_ROWS = frozenset({"cpu"})


def sdpa_attention(q, k, v, *, causal: bool, mask, scale: float, dropout_p: float = 0.0) -> torch.Tensor:
    """SDPA with attnkit's conventions; ``dropout_p`` drops attention weights (training-time dropout, as SDPA's)."""
    gqa = q.shape[1] != k.shape[1]
    q_len, kv_len = q.shape[2], k.shape[2]
    if mask is None:
        if not causal or q_len == 1 and kv_len >= 1:
            return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa, dropout_p=dropout_p)
        if q_len == kv_len:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa, dropout_p=dropout_p)
    allowed = causal_mask(q_len, kv_len, q.device) if causal else None
    if mask is not None and mask.dtype == torch.bool:
        allowed = mask if allowed is None else (mask & allowed)
        additive = None
    else:
        additive = mask
    if additive is not None:
        # Fold the causal rule into the additive mask; -inf entries mark masked pairs.
        if allowed is not None:
            additive = additive.masked_fill(~allowed, float("-inf"))
        if q.device.type in _SDPA_ZEROES_DEAD_ROWS:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=additive, scale=scale, enable_gqa=gqa, dropout_p=dropout_p)
        rows_alive = ~torch.isneginf(additive).all(dim=-1, keepdim=True)
        if not bool(rows_alive.all()):
            additive = additive.masked_fill(~rows_alive, 0.0)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive, scale=scale, enable_gqa=gqa, dropout_p=dropout_p)
            return out.masked_fill(~rows_alive, 0.0)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=additive, scale=scale, enable_gqa=gqa, dropout_p=dropout_p)
    if q.device.type in _SDPA_ZEROES_DEAD_ROWS:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale, enable_gqa=gqa, dropout_p=dropout_p)
    rows_alive = allowed.any(dim=-1, keepdim=True)
    if not bool(rows_alive.all()):
        # A row with no key left: let SDPA attend anywhere, then zero the row, so neither
        # the forward nor the backward ever sees 0/0.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | ~rows_alive, scale=scale, enable_gqa=gqa, dropout_p=dropout_p)
        return out.masked_fill(~rows_alive, 0.0)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale, enable_gqa=gqa, dropout_p=dropout_p)
