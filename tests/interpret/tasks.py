"""Tiny models trained in a second on tasks whose answer token is known (for attribution tests).

The marked-copy task: a sequence of random tokens, one of them marked; the model must output
the marked token. Whatever explains the output should point at the marked position.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

import attnkit

VOCAB, LENGTH, DIM = 8, 7, 32


def marked_batch(batch: int, generator: torch.Generator):
    tokens = torch.randint(0, VOCAB, (batch, LENGTH), generator=generator)
    marked = torch.randint(0, LENGTH, (batch,), generator=generator)
    return tokens, marked, tokens[torch.arange(batch), marked]


class Encoder(nn.Module):
    """Token + marker + position embeddings, then attention layers with residuals; a readout token in front
    (self-attention), or a decoder query cross-attending to the encoded tokens (``cross=True``)."""

    def __init__(self, layers: int = 2, cross: bool = False):
        super().__init__()
        self.cross = cross
        self.embed = nn.Embedding(VOCAB + 1, DIM)  # the last id is the readout token
        self.marker = nn.Parameter(torch.randn(DIM))
        self.position = nn.Parameter(0.1 * torch.randn(LENGTH + 1, DIM))
        self.layers = nn.ModuleList(attnkit.nn.Attention(DIM, 2) for _ in range(layers))
        self.query = nn.Parameter(torch.randn(1, 1, DIM))
        self.read = attnkit.nn.Attention(DIM, 2)
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, tokens, marked):
        B = tokens.shape[0]
        x = self.embed(tokens) + self.marker * nn.functional.one_hot(marked, LENGTH)[..., None]
        if not self.cross:
            x = torch.cat([self.embed.weight[VOCAB].expand(B, 1, DIM), x], dim=1)
        x = x + self.position[: x.shape[1]]
        for layer in self.layers:
            x = x + layer(x)
        if self.cross:
            return self.head(self.query.expand(B, 1, DIM) + self.read(self.query.expand(B, 1, DIM), x))[:, 0]
        return self.head(x[:, 0])


@functools.lru_cache(maxsize=None)
def trained(cross: bool = False, steps: int = 60) -> Encoder:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = Encoder(layers=1 if cross else 2, cross=cross)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        tokens, marked, answer = marked_batch(64, g)
        loss = nn.functional.cross_entropy(model(tokens, marked), answer)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
