"""A bidirectional encoder whose layers use any attnkit mechanism.

Same blocks as :class:`attnkit.models.DecoderLM`, run without causality and
with a key-padding mask, so a padded batch encodes each sequence as if alone.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import Block
from .config import ModelConfig


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be an attnkit.models.ModelConfig, got {type(config).__name__}")
        config.require_pattern("noncausal-self", "an encoder")
        if any("deconstructed" in spec for spec in config.layer_mixers()):
            raise ValueError("the deconstructed variants are decoder layers (causal); an Encoder takes none")
        if config.meta_tokens or config.kv_sharing:
            raise ValueError("meta_tokens and kv_sharing are decoder options (Hymba); an Encoder takes neither")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(
            Block(spec, config.dim, config.heads, config.kv_heads, config.mlp_ratio) for spec in config.layer_mixers()
        )
        self.norm = nn.RMSNorm(config.dim)

    def forward(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states ``(B, N, dim)``; ``padding_mask (B, N)`` is True at real tokens."""
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.ndim != 2:
            raise TypeError(f"tokens must be a (batch, seq) torch.long tensor, got {getattr(tokens, 'dtype', type(tokens).__name__)}")
        mask = None
        if padding_mask is not None:
            if not isinstance(padding_mask, torch.Tensor) or padding_mask.dtype != torch.bool or padding_mask.shape != tokens.shape:
                raise ValueError(f"padding_mask must be a boolean tensor of shape {tuple(tokens.shape)} (True = real token)")
            mask = padding_mask[:, None, None, :]
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, causal=False, mask=mask)
        return self.norm(x)
