"""Dense softmax attention through ``torch.nn.functional.scaled_dot_product_attention``.

The fast path for plain softmax attention: SDPA picks the best kernel for the
device (flash / memory-efficient / math). attnkit adds only what SDPA does not
do by itself: bottom-right causal alignment when ``q_len != kv_len``, key
padding and combined masks, and zeros (not NaN) for fully masked rows.

SDPA applies a mask by adding -inf to the scores (a boolean one too), so a NaN
or infinite key would reach the rows its mask blocks (NaN + -inf = NaN); with
``is_causal`` it depends on the kernel (torch 2.5's CPU kernel and the math
backend leak, torch 2.13's CPU kernel does not). When a mask or the causal rule
is applied and the keys are not all finite (a sum over ``k``), the call runs
the softmax written out instead, with blocked scores set to -inf, so a NaN key
stays causal; finite keys (every ordinary call) go to SDPA.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..scores.normalisers import SOFTMAX
from .nonfinite import all_finite
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
        if q_len == kv_len and all_finite(k):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa, dropout_p=dropout_p)
    allowed = causal_mask(q_len, kv_len, q.device) if causal else None
    if mask is not None and mask.dtype == torch.bool:
        allowed = mask if allowed is None else (mask & allowed)
        additive = None
    else:
        additive = mask
    if not all_finite(k):
        return _blocked_written_as_minus_inf(q, k, v, allowed, additive, scale, dropout_p)
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


def _blocked_written_as_minus_inf(q, k, v, allowed, additive, scale, dropout_p):
    """Masked softmax attention whose blocked scores (``allowed`` False, or an additive -inf) are set to
    -inf rather than added to, for keys that are not all finite: their NaN scores stay in the rows that
    may see them. Rows with no allowed key are zeros, as everywhere."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale
    if additive is not None:
        scores = scores + additive
        open_pairs = ~torch.isneginf(additive)
        allowed = open_pairs if allowed is None else allowed & open_pairs
    weights = SOFTMAX.weights(scores, allowed)
    if dropout_p:
        weights = F.dropout(weights, dropout_p)
    return weights @ v
