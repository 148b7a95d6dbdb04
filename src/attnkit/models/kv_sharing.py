"""Cross-layer KV sharing (Hymba): a layer that attends with the keys and values of the layer before it.

Dong et al., "Hymba: A Hybrid-head Architecture for Small Language Models", section 2.3: the
KV caches of consecutive layers are highly similar, so every two consecutive attention layers
share one: the second layer keeps its own query and output projections but reads the first
layer's keys and values (``K_{i+1} = K_i``, ``V_{i+1} = V_i``), and holds no cache of its own.

Here the consumer is handed the producer's layer input and the producer's state from
*before* this call; it projects keys and values with the producer's projections (the same
numbers the producer computed) and continues the producer's cache, dropping the result. So
decoding stores one KV cache per pair of layers, and incremental calls equal one call.
"""
from __future__ import annotations

from torch import nn

from ..api import attention
from ..nn import Attention


class SharedKVState:
    """A KV-sharing layer's state: it holds no keys or values (they are the producer's); ``length`` only."""

    def __init__(self, length: int):
        self.length = length

    def numel(self) -> int:
        return 0


class SharedKVAttention(nn.Module):
    """Attention with its own queries and output projection over ``producer``'s keys and values."""

    def __init__(self, producer: Attention):
        super().__init__()
        if producer.context_parallel is not None:
            raise ValueError("cross-layer KV sharing does not run with context_parallel")
        if producer.inputs is not None:
            raise ValueError(f"mechanism {producer.mechanism!r} computes learned tensor inputs per layer; "
                             "KV sharing needs a mechanism whose state is a KV cache")
        self._producer = (producer,)  # a reference, not a submodule: its weights belong to its own layer
        dim, heads, head_dim = producer.dim, producer.heads, producer.head_dim
        self.mechanism, self.mechanism_params, self.rope = producer.mechanism, producer.mechanism_params, producer.rope
        self.heads = heads
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=producer.q_proj.bias is not None)
        self.out_proj = nn.Linear(heads * head_dim, dim, bias=producer.out_proj.bias is not None)

    def forward(self, x, *, causal=False, mask=None, state=None, return_state=False, kv_source=None):
        """``kv_source = (producer_input, producer_state_before_this_call)``, from the model."""
        if kv_source is None:
            raise ValueError("a KV-sharing layer needs kv_source: the producer layer's input and prior state")
        producer = self._producer[0]
        source, producer_state = kv_source
        q = producer.split_heads(self.q_proj(x), self.heads)
        if producer.q_norm is not None:
            q = producer.q_norm(q)
        k, v = producer.project_kv(source)
        incremental = return_state or state is not None
        kw = dict(state=producer_state, return_state=True) if incremental else {}
        out = attention(q, k, v, self.mechanism, causal=causal, mask=mask, position=self.rope, **kw,
                        **self.mechanism_params)
        if incremental:
            out = out[0]
        out = self.out_proj(out.transpose(1, 2).flatten(2))
        if not return_state:
            return out
        return out, SharedKVState((state.length if state is not None else 0) + x.shape[1])
