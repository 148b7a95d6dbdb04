"""Zoology's MQAR model and its training loop, built on :func:`attnkit.attention`.

The model of "Zoology: Measuring and Improving Recall in Efficient Language
Models": token embedding plus learned positions, two pre-norm blocks whose only
content is a sequence mixer (no MLP), a final norm and an LM head. As in
Zoology's and Based's hybrid configurations, each mixer starts with a short
causal depthwise convolution; then q, k, v projections, ``attnkit.attention``
with the mechanism under test (``causal=True``), and an output projection.

A mechanism's extra tensor inputs (gates, betas) come from the layer its spec
registers (``spec.extra["module"]``). Without one, per-token inputs are produced
from the hidden state by a learned projection, squashed into the range of the
example the mechanism's ``spec.tensor_inputs`` gives ((0, 1) -> sigmoid, <= 0 -> -softplus,
>= 0 -> softplus); other tensor inputs become learned parameters initialised
from the example.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from .. import attention, spec as get_spec
from ._mqar_data import IGNORE


class TensorInputs(nn.Module):
    """Learned producers of a mechanism's extra tensor inputs."""

    def __init__(self, spec, d_model: int, heads: int, kv_heads: int, qk_dim: int, v_dim: int, seq_len: int):
        super().__init__()
        self.per_token = nn.ModuleDict()
        self.fixed = nn.ParameterDict()
        self.squash: dict[str, str] = {}
        self.shapes: dict[str, tuple] = {}
        if spec.tensor_inputs is None:
            return
        g = torch.Generator().manual_seed(0)
        q = torch.randn(1, heads, seq_len, qk_dim, generator=g)
        k = torch.randn(1, kv_heads, seq_len, qk_dim, generator=g)
        v = torch.randn(1, kv_heads, seq_len, v_dim, generator=g)
        for name, example in spec.tensor_inputs(q, k, v, g).items():
            if name in spec.tensor_inputs_per_token:
                lead, rest = example.shape[1], tuple(example.shape[3:])
                self.shapes[name] = (lead, rest)
                self.per_token[name] = nn.Linear(d_model, lead * math.prod(rest))
                self.squash[name] = _range_of(example)
            else:
                self.fixed[name] = nn.Parameter(example.detach().clone().float())

    def forward(self, x: torch.Tensor, q=None, k=None, v=None) -> dict:
        B, L, _ = x.shape
        out = dict(self.fixed.items())
        for name, proj in self.per_token.items():
            lead, rest = self.shapes[name]
            t = proj(x).view(B, L, lead, *rest).movedim(2, 1)
            out[name] = _SQUASH[self.squash[name]](t)
        return out


_SQUASH = {"unit": torch.sigmoid, "nonpositive": lambda t: -F.softplus(t), "nonnegative": F.softplus,
           "any": lambda t: t}


def _range_of(example: torch.Tensor) -> str:
    lo, hi = float(example.min()), float(example.max())
    if lo >= 0 and hi <= 1:
        return "unit"
    if hi <= 0:
        return "nonpositive"
    if lo >= 0:
        return "nonnegative"
    return "any"


class Mixer(nn.Module):
    """Short causal convolution, then q/k/v projections and ``attnkit.attention``."""

    def __init__(self, mechanism: str, params: dict, d_model: int, heads: int, qk_dim: int, seq_len: int,
                 conv_size: int = 4):
        super().__init__()
        spec = get_spec(mechanism)
        self.mechanism, self.params, self.heads, self.qk_dim = mechanism, dict(params), heads, qk_dim
        self.v_dim = d_model // heads
        self.conv = nn.Conv1d(d_model, d_model, conv_size, groups=d_model, padding=conv_size - 1)
        self.q = nn.Linear(d_model, heads * qk_dim)
        self.k = nn.Linear(d_model, heads * qk_dim)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        factory = spec.extra.get("module")
        if factory is not None:  # the mechanism's own layer for its tensor inputs (docs/design.md)
            self.inputs = factory(dim=d_model, heads=heads, kv_heads=heads, head_dim=qk_dim)
        else:
            self.inputs = TensorInputs(spec, d_model, heads, heads, qk_dim, self.v_dim, seq_len)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        x = self.conv(x.transpose(1, 2))[..., :L].transpose(1, 2)
        q = self.q(x).view(B, L, self.heads, self.qk_dim).transpose(1, 2)
        k = self.k(x).view(B, L, self.heads, self.qk_dim).transpose(1, 2)
        v = self.v(x).view(B, L, self.heads, self.v_dim).transpose(1, 2)
        o = attention(q, k, v, self.mechanism, causal=True, **self.params, **self.inputs(x, q, k, v))
        return self.out(o.transpose(1, 2).reshape(B, L, -1))


class MQARModel(nn.Module):
    def __init__(self, mechanism: str, params: dict, vocab: int, d_model: int, seq_len: int, heads: int = 1,
                 qk_dim: int | None = None, layers: int = 2):
        super().__init__()
        qk_dim = qk_dim or d_model // heads
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(seq_len, d_model)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(layers))
        self.mixers = nn.ModuleList(Mixer(mechanism, params, d_model, heads, qk_dim, seq_len) for _ in range(layers))
        self.final = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for norm, mixer in zip(self.norms, self.mixers):
            x = x + mixer(norm(x))
        return self.head(self.final(x))


@torch.no_grad()
def accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    right = total = 0
    for s in range(0, len(inputs), batch):
        y = targets[s:s + batch]
        pred = model(inputs[s:s + batch]).argmax(-1)
        keep = y != IGNORE
        right += int((pred[keep] == y[keep]).sum())
        total += int(keep.sum())
    model.train()
    return right / max(total, 1)


def train(model: nn.Module, train_data, test_data, *, lr: float, epochs: int, batch: int = 64,
          weight_decay: float = 0.1, stop_at: float = 0.99, seed: int = 0) -> dict:
    """AdamW with a cosine schedule; test accuracy after every epoch; stop early at ``stop_at``."""
    inputs, targets = train_data
    steps_per_epoch = math.ceil(len(inputs) / batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(seed)
    best, t0, epoch = 0.0, time.perf_counter(), 0
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(inputs), generator=g)
        for s in range(0, len(inputs), batch):
            idx = order[s:s + batch]
            logits = model(inputs[idx])
            loss = F.cross_entropy(logits.flatten(0, 1), targets[idx].flatten(), ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        best = max(best, accuracy(model, *test_data))
        if best >= stop_at:
            break
    return {"accuracy": best, "epochs": epoch, "seconds": round(time.perf_counter() - t0, 1)}
