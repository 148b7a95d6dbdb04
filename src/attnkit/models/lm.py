"""A small decoder-only language model whose layers use any attnkit mechanism.

``DecoderLM(ModelConfig(schedule="LLLF", mixers={"L": "...", "F": "softmax"}))``
builds token embeddings, one pre-norm block per schedule letter, a final norm
and a (tied) output head. ``generate`` prefills the prompt once and then feeds
one token at a time through every layer's state (KV cache or recurrent state),
which gives exactly the tokens that recomputing the whole sequence would.

``ModelConfig.meta_tokens`` (Hymba): learnable tokens prepended to the sequence on its first
call (the one without a state, or with states that have consumed nothing); their logits are
dropped, so outputs align with ``tokens``. ``ModelConfig.kv_sharing``: see
:mod:`attnkit.models.kv_sharing`.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import Block
from .config import ModelConfig
from .deconstructed import FixedStream
from ..nn import sigma_reparam
from ..validation import check_int


class DecoderLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be an attnkit.models.ModelConfig, got {type(config).__name__}")
        config.require_pattern("causal-self", "a decoder")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.kv_producers = config.kv_producers()
        blocks = []
        for spec, producer in zip(config.layer_mixers(), self.kv_producers):
            blocks.append(Block(spec, config.dim, config.heads, config.kv_heads, config.mlp_ratio,
                                kv_producer=None if producer is None else blocks[producer]))
        self.blocks = nn.ModuleList(blocks)
        fixed = config.fixed_qk_stream()
        self.fixed_stream = FixedStream(*fixed, config.dim) if fixed is not None else None
        self.meta = nn.Parameter(torch.randn(config.meta_tokens, config.dim) * 0.02) if config.meta_tokens else None
        if config.sigma_reparam:
            sigma_reparam(self.blocks)
        self.norm = nn.RMSNorm(config.dim)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, *, state=None, return_state: bool = False, mask=None):
        """Logits ``(B, N, vocab)`` for tokens ``(B, N)``; with ``return_state`` also the layers' states.
        ``mask``: as in :func:`attnkit.attention`, intersected with causality in every layer (e.g.
        :func:`attnkit.models.block_attention.block_attention_mask`)."""
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.ndim != 2:
            raise TypeError(f"tokens must be a (batch, seq) torch.long tensor, got {getattr(tokens, 'dtype', type(tokens).__name__)} "
                            f"of shape {tuple(getattr(tokens, 'shape', ()))}")
        if tokens.shape[1] == 0:
            raise ValueError("tokens has sequence length 0; expected at least one token")
        if state is not None and len(state) != len(self.blocks):
            raise ValueError(f"state holds {len(state)} layer states but the model has {len(self.blocks)} layers")
        if mask is not None and self.meta is not None:
            raise ValueError("mask: a model with meta tokens takes no mask (the meta tokens it prepends are not in it)")
        states = state if state is not None else [None] * len(self.blocks)
        incremental = return_state or state is not None
        x = self.embed(tokens)
        qk_streams = self._qk_streams(x, states[0].length if states[0] is not None else 0)
        first = all(s is None or s.length == 0 for s in states)
        if self.meta is not None and first:
            x = torch.cat([self.meta.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        new_states, sources = [], {}
        for i, (block, s) in enumerate(zip(self.blocks, states)):
            producer = self.kv_producers[i]
            kv_source = sources.pop(producer) if producer is not None else None
            if i + 1 < len(self.blocks) and self.kv_producers[i + 1] == i:
                sources[i] = (block.mixer_norm(x), s)
            if incremental:
                x, s = block(x, causal=True, mask=mask, state=s, return_state=True, kv_source=kv_source,
                             qk_stream=qk_streams[i])
                new_states.append(s)
            else:
                x = block(x, causal=True, mask=mask, kv_source=kv_source, qk_stream=qk_streams[i])
        if self.meta is not None and first:
            x = x[:, self.meta.shape[0]:]
        logits = self.head(self.norm(x))
        return (logits, new_states) if return_state else logits

    def _qk_streams(self, embedded: torch.Tensor, start: int) -> list:
        """Per block, the stream its Q and K come from at positions ``start ..`` (None: its own input):
        the token embeddings (StaticEmbQK), or the fixed sequence's hidden states entering the block
        (RndEmbQK, FixedSeqQK), computed by running that sequence through the blocks below."""
        sources = [b.qk_source for b in self.blocks]
        streams = [embedded if source == "embedding" else None for source in sources]
        if "fixed" not in sources:
            return streams
        n = embedded.shape[1]
        if start + n > self.fixed_stream.length:
            raise ValueError(f"positions up to {start + n} exceed the fixed Q/K sequence's length "
                             f"{self.fixed_stream.length} (rnd_emb_qk length= / fixed_seq_qk tokens=)")
        f = self.fixed_stream.embedded(self.embed)
        last = max(i for i, source in enumerate(sources) if source == "fixed")
        for i, block in enumerate(self.blocks[:last + 1]):
            if sources[i] == "fixed":
                streams[i] = f[:, start:start + n]
            if i < last:
                f = block(f, causal=True, qk_stream=f if sources[i] == "fixed" else None)
        return streams

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                 generator: torch.Generator | None = None, state=None) -> torch.Tensor:
        """Continue ``prompt (B, N)`` by ``max_new_tokens``; greedy when ``temperature == 0``.

        ``state``: the layers' initial states, e.g. ``attnkit.cache.layer_states(policy, layers)``
        for a compressing KV cache (default: each mechanism's own)."""
        check_int("max_new_tokens", max_new_tokens, minimum=0)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        out = prompt
        if max_new_tokens == 0:
            return out
        logits, state = self(prompt, state=state, return_state=True)
        for i in range(max_new_tokens):
            last = logits[:, -1]
            if temperature == 0:
                nxt = last.argmax(-1, keepdim=True)
            else:
                nxt = torch.multinomial(torch.softmax(last / temperature, -1), 1, generator=generator)
            out = torch.cat([out, nxt], dim=1)
            if i + 1 < max_new_tokens:
                logits, state = self(nxt, state=state, return_state=True)
        return out
