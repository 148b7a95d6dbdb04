"""A pre-norm transformer block: ``x + mixer(norm(x))``, then ``x + mlp(norm(x))``.

With ``kv_producer`` (the previous block) the mixer reads that block's keys and values
(Hymba's cross-layer KV sharing); the model then passes ``kv_source`` to ``forward``. A
Deconstructing Attention variant that takes Q and K from another stream gets it as ``qk_stream``
(a fixed sequence's hidden states, normalised here as the layer's input is, or the raw token
embeddings)."""
from __future__ import annotations

from torch import nn

from .deconstructed import QK_SOURCE
from .mixers import build_mixer


class Block(nn.Module):
    def __init__(self, spec: dict, dim: int, heads: int, kv_heads: int | None, mlp_ratio: float,
                 kv_producer: "Block | None" = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.mixer_norm = nn.RMSNorm(dim)
        self.mixer = build_mixer(spec, dim, heads, kv_heads, dim // heads,
                                 kv_producer=None if kv_producer is None else kv_producer.mixer)
        self.shares_kv = kv_producer is not None
        self.qk_source = QK_SOURCE.get(spec.get("deconstructed"))
        self.mlp_norm = nn.RMSNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x, *, causal, mask=None, state=None, return_state=False, kv_source=None, qk_stream=None):
        """``kv_source``: the producer block's mixer input and prior state, when this block shares its KV."""
        shared = {"kv_source": kv_source} if self.shares_kv else {}
        if self.qk_source is not None:
            if qk_stream is None:
                raise ValueError("this layer takes Q and K from another stream (a Deconstructing Attention "
                                 "variant); run it inside attnkit.models.DecoderLM, which provides it")
            shared["qk_input"] = self.mixer_norm(qk_stream) if self.qk_source == "fixed" else qk_stream
        y = self.mixer(self.mixer_norm(x), causal=causal, mask=mask, state=state, return_state=return_state, **shared)
        if return_state:
            y, state = y
        x = x + y
        x = x + self.mlp(self.mlp_norm(x))
        return (x, state) if return_state else x
