"""Block Transformer: Ho, Bae, Kim, et al., "Block Transformer: Global-to-Local Language Modeling
for Fast Inference" (NeurIPS 2024).

Global-to-local: the expensive global attention runs over *blocks* of ``block_len`` tokens, and
the tokens are decoded by a small model that only looks inside their own block.

- **Embedder** (the paper's lookup embedder): block ``b``'s embedding is the concatenation of
  its tokens' embeddings, each ``dim / block_len`` wide: ``e_b = [E(x_{b,0}); ...; E(x_{b,L-1})]``.
- **Block decoder**: a causal transformer over ``[s, e_0, e_1, ..., e_{B-2}]`` (``s`` a learned
  start block), so its output ``c_b`` at place ``b`` has seen exactly the blocks before ``b``:
  the context embedding of block ``b``.
- **Token decoder** (the paper's prefix method): a causal transformer over the ``prefix_len``
  vectors ``W c_b`` followed by the embeddings of block ``b``'s tokens but its last; the output
  at place ``prefix_len - 1 + j`` predicts token ``x_{b,j}``. Its attention never leaves the
  block, so at inference its KV cache holds one block, and the block decoder runs once per
  block: the source of the paper's throughput.

``generate`` decodes with both caches, as the paper's inference does: the block decoder's KV
cache grows by one entry per *block* (it runs once when a block is complete), and the token
decoder's cache is dropped at every block boundary, so it never holds more than ``prefix_len +
block_len`` entries; its tokens equal recomputing the whole sequence for every new token.

``BlockTransformerLM(tokens)`` returns ``logits[:, t]`` for token ``t`` given the tokens before
it (unlike :class:`DecoderLM`, whose ``logits[:, t]`` predict token ``t + 1``): ``loss(tokens)``
is the cross-entropy of every token. Both decoders are stacks of attnkit's pre-norm blocks with
any registered causal mechanism.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Block
from .config import mixer_spec
from ..validation import check_int


class BlockTransformerLM(nn.Module):
    paper = "Block Transformer: Global-to-Local Language Modeling for Fast Inference"

    def __init__(self, vocab_size: int = 256, *, block_len: int = 4, dim: int = 128, heads: int = 4,
                 block_layers: int = 2, token_layers: int = 2, prefix_len: int = 1, mlp_ratio: float = 4.0,
                 block_mixer="softmax", token_mixer="softmax"):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("block_len", block_len), ("dim", dim), ("heads", heads),
                            ("block_layers", block_layers), ("token_layers", token_layers), ("prefix_len", prefix_len)):
            check_int(name, value)
        if dim % block_len:
            raise ValueError(f"dim={dim} must be divisible by block_len={block_len} (a block embedding concatenates "
                             f"block_len token embeddings of dim / block_len)")
        self.block_len, self.prefix_len, self.dim = block_len, prefix_len, dim
        self.block_embed = nn.Embedding(vocab_size, dim // block_len)
        self.start = nn.Parameter(torch.zeros(dim))
        self.block_decoder = nn.ModuleList(Block(mixer_spec(block_mixer, True), dim, heads, None, mlp_ratio)
                                           for _ in range(block_layers))
        self.block_norm = nn.RMSNorm(dim)
        self.to_prefix = nn.Linear(dim, prefix_len * dim)
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.token_decoder = nn.ModuleList(Block(mixer_spec(token_mixer, True), dim, heads, None, mlp_ratio)
                                           for _ in range(token_layers))
        self.norm = nn.RMSNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.head.weight = self.token_embed.weight
        for table in (self.block_embed, self.token_embed):
            nn.init.normal_(table.weight, std=0.02)

    def _check(self, tokens):
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.ndim != 2:
            raise TypeError(f"tokens must be a (batch, seq) torch.long tensor, got "
                            f"{getattr(tokens, 'dtype', type(tokens).__name__)} of shape {tuple(getattr(tokens, 'shape', ()))}")
        if tokens.shape[1] == 0 or tokens.shape[1] % self.block_len:
            raise ValueError(f"tokens has length {tokens.shape[1]}; expected a positive multiple of block_len={self.block_len}")

    def contexts(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, blocks, dim)``: the block decoder's context embedding of every block (from the blocks before it)."""
        B, N = tokens.shape
        blocks = self.block_embed(tokens).reshape(B, N // self.block_len, self.dim)
        x = torch.cat([self.start.expand(B, 1, self.dim), blocks[:, :-1]], dim=1)
        for block in self.block_decoder:
            x = block(x, causal=True)
        return self.block_norm(x)

    def decode_block(self, context: torch.Tensor, block_tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``(..., j, vocab)`` for each token of a block given its ``context`` ``(..., dim)`` and the
        block's first ``j - 1`` tokens (``block_tokens`` ``(..., j)``, ``j <= block_len``; the last one is not read)."""
        lead = block_tokens.shape[:-1]
        prefix = self.to_prefix(context).reshape(-1, self.prefix_len, self.dim)
        x = torch.cat([prefix, self.token_embed(block_tokens[..., :-1]).reshape(prefix.shape[0], -1, self.dim)], dim=1)
        for block in self.token_decoder:
            x = block(x, causal=True)
        out = self.head(self.norm(x[:, self.prefix_len - 1:]))
        return out.reshape(*lead, block_tokens.shape[-1], -1)

    def _prefix(self, context: torch.Tensor) -> torch.Tensor:
        return self.to_prefix(context).reshape(-1, self.prefix_len, self.dim)

    @staticmethod
    def _run(layers, x, states):
        """``x`` through ``layers`` continuing their ``states`` (None: fresh); the output and the new states."""
        new = []
        for block, state in zip(layers, states):
            x, state = block(x, causal=True, state=state, return_state=True)
            new.append(state)
        return x, new

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue ``prompt (B, N)`` (any ``N >= 1``) by ``max_new_tokens``; greedy when ``temperature == 0``.

        The prompt's complete blocks go through the block decoder in one call; the token decoder reads
        the prefix of the current block's context and the prompt's tokens of that block. Then, per new
        token, one token-decoder step, and when the token completes its block, one block-decoder step
        (its block embedding) and a fresh token-decoder cache started from the next block's prefix."""
        if not isinstance(prompt, torch.Tensor) or prompt.dtype != torch.long or prompt.ndim != 2 or not prompt.shape[1]:
            raise TypeError(f"prompt must be a (batch, seq) torch.long tensor with seq >= 1, got "
                            f"{getattr(prompt, 'dtype', type(prompt).__name__)} of shape {tuple(getattr(prompt, 'shape', ()))}")
        check_int("max_new_tokens", max_new_tokens, minimum=0)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if max_new_tokens == 0:
            return prompt
        B, N = prompt.shape
        L, fresh = self.block_len, [None] * len(self.token_decoder)
        done = N // L * L
        x = torch.cat([self.start.to(self.block_embed.weight.dtype).expand(B, 1, self.dim),
                       self.block_embed(prompt[:, :done]).reshape(B, done // L, self.dim)], dim=1)
        x, block_states = self._run(self.block_decoder, x, [None] * len(self.block_decoder))
        y = torch.cat([self._prefix(self.block_norm(x[:, -1])), self.token_embed(prompt[:, done:])], dim=1)
        y, token_states = self._run(self.token_decoder, y, fresh)
        out = prompt
        for i in range(max_new_tokens):
            last = self.head(self.norm(y[:, -1]))
            if temperature == 0:
                nxt = last.argmax(-1, keepdim=True)
            else:
                nxt = torch.multinomial(torch.softmax(last / temperature, -1), 1, generator=generator)
            out = torch.cat([out, nxt], dim=1)
            if i + 1 == max_new_tokens:
                break
            if out.shape[1] % L:
                y, token_states = self._run(self.token_decoder, self.token_embed(nxt), token_states)
            else:  # the block is complete: one block-decoder step, then a fresh token decoder
                x, block_states = self._run(self.block_decoder, self.block_embed(out[:, -L:]).reshape(B, 1, self.dim),
                                            block_states)
                y, token_states = self._run(self.token_decoder, self._prefix(self.block_norm(x[:, -1])), fresh)
        return out

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, vocab)``: ``logits[:, t]`` scores token ``t`` given ``tokens[:, :t]`` (N a multiple of block_len)."""
        self._check(tokens)
        B, N = tokens.shape
        blocks = tokens.reshape(B, N // self.block_len, self.block_len)
        return self.decode_block(self.contexts(tokens), blocks).reshape(B, N, -1)

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (nats) of every token given the ones before it."""
        logits = self(tokens)
        return F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
