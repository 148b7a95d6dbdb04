"""RNN encoder-decoders with classic attention on two synthetic tasks (``attnkit train seq2seq``).

- ``sort``: a Pointer Network (Vinyals et al., "Pointer Networks", 2015) reads
  ``length`` numbers drawn uniformly from [0, 1) and points at them in
  increasing order. Encoder: a bidirectional LSTM over the numbers, each state
  ``e_j`` with the number's embedding beside it; decoder: an
  LSTM cell fed the number it pointed at last; output: :class:`attnkit.nn.PointerAttention`
  (the additive score as the output distribution) over the positions not yet
  chosen (the paper constrains its beam search to valid outputs the same way).
- ``reverse``: a Bahdanau et al. model ("Neural Machine Translation by Jointly
  Learning to Align and Translate", 2015) writes a random lowercase string
  backwards. Encoder: a bidirectional GRU; decoder: a GRU cell fed the previous
  character and the context ``c_i``, which is :func:`attnkit.attention` with the
  ``"additive"`` mechanism (``e_ij = v_a^T tanh(W_a s_{i-1} + U_a h_j)``) over the
  encoder states.

Both train with teacher forcing and Adam (the rate decays along a cosine to a
tenth over the budget), and decode greedily. Training stops
when the exact-sequence accuracy on a validation set reaches the target or the
budget (minutes, steps) runs out; the reported accuracy is measured afterwards
on a separate test set.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..api import attention
from ..nn import PointerAttention
from ..validation import check_int

TASKS = ("sort", "reverse")
ALPHABET = 26  # lowercase letters; token 0 is the start / padding symbol


@dataclass
class Seq2SeqConfig:
    task: str = "sort"
    length: int = 10  # sort: numbers per example; reverse: the longest string
    hidden: int = 128
    batch: int = 128
    lr: float = 2e-3
    minutes: float = 5.0
    max_steps: int | None = None
    target: float | None = None  # stop once the validation exact-sequence accuracy reaches this
    eval_every: int = 100
    seed: int = 0

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        for name in ("length", "hidden", "batch", "eval_every"):
            check_int(name, getattr(self, name))
        check_int("max_steps", self.max_steps, minimum=0, optional=True)


def make_batch(cfg: Seq2SeqConfig, n: int, generator: torch.Generator):
    """``(inputs, targets, lengths)``. sort: inputs ``(n, L)`` floats, targets the argsort ``(n, L)``.
    reverse: token ids ``(n, L)`` (0-padded), targets the reversed strings, lengths ``(n,)``."""
    if cfg.task == "sort":
        x = torch.rand(n, cfg.length, generator=generator)
        return x, x.argsort(dim=1), torch.full((n,), cfg.length)
    lengths = torch.randint(max(1, cfg.length // 2), cfg.length + 1, (n,), generator=generator)
    tokens = torch.randint(1, ALPHABET + 1, (n, cfg.length), generator=generator)
    valid = torch.arange(cfg.length)[None, :] < lengths[:, None]
    tokens = tokens * valid
    backwards = (lengths[:, None] - 1 - torch.arange(cfg.length)[None, :]).clamp_min(0)
    return tokens, tokens.gather(1, backwards) * valid, lengths


class PointerSorter(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.embed = nn.Linear(1, hidden)
        self.encoder = nn.LSTM(hidden, hidden, batch_first=True, bidirectional=True)
        self.start = nn.Parameter(torch.zeros(hidden))
        self.decoder = nn.LSTMCell(hidden, 2 * hidden)
        self.pointer = PointerAttention(2 * hidden, 3 * hidden, hidden)

    def forward(self, x, targets=None):
        """Log-probabilities ``(B, L, L)`` of each step's pointer; greedy when ``targets`` is None."""
        B, L = x.shape
        inputs = self.embed(x.unsqueeze(-1))
        enc, (h, c) = self.encoder(inputs)
        enc = torch.cat([enc, inputs], -1)  # e_j with its input beside it: the pointer compares values finely
        state = (torch.cat([h[0], h[1]], -1), torch.cat([c[0], c[1]], -1))
        free = torch.ones(B, L, dtype=torch.bool, device=x.device)
        step_in, out = self.start.expand(B, -1), []
        rows = torch.arange(B, device=x.device)
        for i in range(L):
            state = self.decoder(step_in, state)
            logp = self.pointer(state[0].unsqueeze(1), enc, free.unsqueeze(1)).squeeze(1)
            out.append(logp)
            chosen = targets[:, i] if targets is not None else logp.argmax(-1)
            free = free.clone()
            free[rows, chosen] = False
            step_in = inputs[rows, chosen]
        return torch.stack(out, 1)


class AdditiveReverser(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        if hidden % 2:
            raise ValueError(f"hidden must be even for the reverse task (two encoder directions), got {hidden}")
        self.embed = nn.Embedding(ALPHABET + 1, hidden, padding_idx=0)
        self.encoder = nn.GRU(hidden, hidden // 2, batch_first=True, bidirectional=True)  # h_j: (hidden,)
        self.bridge = nn.Linear(hidden, hidden)
        self.decoder = nn.GRUCell(2 * hidden, hidden)
        self.w_q = nn.Parameter(torch.randn(1, hidden, hidden) * hidden ** -0.5)  # W_a
        self.w_k = nn.Parameter(torch.randn(1, hidden, hidden) * hidden ** -0.5)  # U_a
        self.v_a = nn.Parameter(torch.randn(1, hidden) * hidden ** -0.5)
        self.out = nn.Linear(3 * hidden, ALPHABET + 1)

    def context(self, s, enc, valid):
        """``c_i = sum_j a_ij h_j`` with Bahdanau's additive score: one attnkit call, one head."""
        q = s[:, None, None, :]  # (B, 1, 1, hidden): the query is s_{i-1}
        k = enc[:, None]  # (B, 1, L, 2 hidden)
        return attention(q, k, k, "additive", mask=valid[:, None, None, :],
                                 w_q=self.w_q, w_k=self.w_k, v_a=self.v_a)[:, 0, 0]

    def forward(self, tokens, lengths, targets=None):
        """Logits ``(B, L, ALPHABET + 1)``; greedy decoding when ``targets`` is None."""
        B, L = tokens.shape
        valid = torch.arange(L, device=tokens.device)[None, :] < lengths[:, None]
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(tokens), lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        enc, h = self.encoder(packed)
        enc, _ = nn.utils.rnn.pad_packed_sequence(enc, batch_first=True, total_length=L)
        s = torch.tanh(self.bridge(torch.cat([h[0], h[1]], -1)))
        prev, out = torch.zeros(B, dtype=torch.long, device=tokens.device), []
        for i in range(L):
            e = self.embed(prev)
            c = self.context(s, enc, valid)
            s = self.decoder(torch.cat([e, c], -1), s)
            logits = self.out(torch.cat([s, c, e], -1))
            out.append(logits)
            prev = targets[:, i] if targets is not None else logits.argmax(-1)
        return torch.stack(out, 1)


def build_model(cfg: Seq2SeqConfig) -> nn.Module:
    return PointerSorter(cfg.hidden) if cfg.task == "sort" else AdditiveReverser(cfg.hidden)


def loss_of(model, cfg, batch):
    inputs, targets, lengths = batch
    if cfg.task == "sort":
        logp = model(inputs, targets)
        return F.nll_loss(logp.flatten(0, 1), targets.flatten())
    logits = model(inputs, lengths, targets)
    valid = torch.arange(cfg.length)[None, :] < lengths[:, None]
    return F.cross_entropy(logits[valid], targets[valid])


@torch.no_grad()
def accuracy(model, cfg, batch) -> tuple[float, float]:
    """(exact-sequence accuracy, per-token accuracy) of greedy decoding."""
    model.eval()
    inputs, targets, lengths = batch
    if cfg.task == "sort":
        predicted = model(inputs).argmax(-1)
        valid = torch.ones_like(targets, dtype=torch.bool)
    else:
        predicted = model(inputs, lengths).argmax(-1)
        valid = torch.arange(cfg.length)[None, :] < lengths[:, None]
    model.train()
    right = (predicted == targets) | ~valid
    return right.all(1).double().mean().item(), right[valid].double().mean().item()  # 950/1000 is 0.95 exactly


def train(cfg: Seq2SeqConfig, *, on_eval=None) -> dict:
    """Train until the validation target or the budget; report the test-set accuracy."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    val = make_batch(cfg, 1000, torch.Generator().manual_seed(cfg.seed + 1))
    test = make_batch(cfg, 4000, torch.Generator().manual_seed(cfg.seed + 2))
    start, step, val_acc, reached = time.perf_counter(), 0, 0.0, False
    while True:
        elapsed = time.perf_counter() - start
        if elapsed > 60 * cfg.minutes or (cfg.max_steps is not None and step >= cfg.max_steps):
            break
        used = elapsed / (60 * cfg.minutes)
        if cfg.max_steps:
            used = max(used, step / cfg.max_steps)
        for group in optimizer.param_groups:  # cosine decay to a tenth over the budget
            group["lr"] = cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(used, 1.0))))
        loss = loss_of(model, cfg, make_batch(cfg, cfg.batch, g))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % cfg.eval_every == 0:
            val_acc = accuracy(model, cfg, val)[0]
            if on_eval is not None:
                on_eval(step, loss.item(), val_acc, time.perf_counter() - start)
            if cfg.target is not None and val_acc >= cfg.target:
                reached = True
                break
    seconds = time.perf_counter() - start
    exact, token = accuracy(model, cfg, test)
    return {"task": cfg.task, "steps": step, "seconds": round(seconds, 1), "validation_exact": round(val_acc, 4),
            "reached_target": reached, "test_exact": round(exact, 4), "test_token": round(token, 4),
            "test_examples": test[0].shape[0]}
