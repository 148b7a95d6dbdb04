"""Layers built on :func:`attnkit.attention`: use any registered mechanism inside a model.

    from attnkit.nn import Attention
    layer = Attention(256, heads=8, kv_heads=2, mechanism="softmax", rope=True)
    y = layer(x, causal=True)                        # self-attention
    y, state = layer(x[:, :5], causal=True, return_state=True)   # then decode with state
    y = layer(x, context=memory)                     # cross-attention
"""
from .attention import Attention, CrossAttentionCache
from .multihead import MultiheadAttention

__all__ = ["Attention", "CrossAttentionCache", "MultiheadAttention"]
