"""``attnkit bench moa``: MoA's per-head elastic windows chosen by profiling, against one uniform window.

MoA (Fu et al., "MoA: Mixture of Sparse Attention for Automatic Large Language Model
Compression") at CPU scale: train the byte-level Shakespeare LM of ``bench heads``, profile
every head's attention influence on training text at each ``--lengths`` (``attnkit.interpret.
moa_search``), choose one elastic rule per head under each density ``--budgets`` (the mean
share of causal pairs kept at the longest length), and compare held-out bits per byte (Hamlet)
of the dense model, the model with MoA's rules and the model with one sliding window for
every head at the same or a higher density (the uniform baseline the paper compares with).
No weights change: the sparse models are the dense model's weights under the ``moa``
mechanism.
"""
from __future__ import annotations

import argparse
import time

import torch

from ...interpret.moa_search import candidate_rules, profile, rule_densities, search
from ...nn import Attention
from ..options import floats, ints, positive_float, positive_int
from ..runner import run_items
from ..store import canonical
from .heads import ByteLM, bits_per_byte, lm_loss, texts, windows

THREADS = 1  # the machine is usually shared


def densities(text: str) -> list[float]:
    """``"0.5,0.25"`` -> ``[0.5, 0.25]``: numbers in (0, 1]."""
    values = floats(text)
    if any(v > 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected densities in (0, 1], got {text!r}")
    return values


def add_arguments(p) -> None:
    p.add_argument("--steps", type=positive_int, default=600, help="training steps (default 600)")
    p.add_argument("--seconds", type=positive_float, default=300.0, help="stop training after this many seconds")
    p.add_argument("--lengths", type=ints, default=[128, 256],
                   help="profiled lengths; the longest is the training, evaluation and budget length")
    p.add_argument("--budgets", type=densities, default=[0.5, 0.25, 0.1],
                   help="mean densities to search for (default 0.5,0.25,0.1)")
    p.add_argument("--calibration", type=positive_int, default=8, help="calibration windows per length")
    p.add_argument("--seed", type=int, default=0)


def with_rules(model: ByteLM, rules: dict) -> ByteLM:
    """A copy of ``model`` whose attention layers run ``moa`` with ``rules[name]`` (module name ->
    ``{"alphas": ..., "betas": ...}``), on the same weights."""
    sparse = ByteLM(dim=model.embed.embedding_dim, heads=model.blocks[0].attn.heads, layers=len(model.blocks))
    for i, block in enumerate(sparse.blocks):
        name = f"blocks.{i}.attn"
        block.attn = Attention(block.attn.dim, block.attn.heads, rope=True, mechanism="moa", **rules[name])
    sparse.load_state_dict(model.state_dict())
    return sparse.to(model.embed.weight.device).eval()


def uniform_window(budget: float, length: int) -> int:
    """The narrowest sliding window whose density at ``length`` is at least ``budget`` (or the whole length)."""
    for window in range(1, length + 1):
        if float(rule_densities(length, [(window, 0.0)])[0]) >= budget - 1e-9:
            return window
    return length


def prepare(args) -> dict:
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    train, held = texts()
    seq = max(args.lengths)
    model = ByteLM().to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    start, step = time.perf_counter(), 0
    while step < args.steps and time.perf_counter() - start < args.seconds:
        loss = lm_loss(model, windows(train, seq, 16, g).to(args.device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
    model.eval()
    t_profile = time.perf_counter()
    profiles = {n: profile(model, windows(train, n, args.calibration, g).to(args.device).split(4), lm_loss)
                for n in args.lengths}
    t_profile = time.perf_counter() - t_profile
    eval_batches = [b.to(args.device) for b in windows(held, seq, 64, g).split(16)]
    dense = bits_per_byte(model, eval_batches)
    print(f"trained {step} steps in {t_profile and time.perf_counter() - start - t_profile:.0f} s at length {seq} "
          f"(threads={torch.get_num_threads()}, {args.device}); profiled {args.calibration} windows at "
          f"{args.lengths} in {t_profile:.0f} s; held-out (Hamlet) bits/byte, dense: {dense:.3f}")
    print(f"{'budget':>7} {'MoA density':>12} {'MoA bits/byte':>14} {'uniform window':>15} {'density':>8} "
          f"{'uniform bits/byte':>18}")
    return {"model": model, "profiles": profiles, "eval": eval_batches, "dense": dense, "steps": step, "seq": seq}


def run(args) -> int:
    cache: dict = {}

    def measure(item):
        if not cache:
            cache.update(prepare(args))
        budget, seq = item["budget"], cache["seq"]
        plan = search(cache["profiles"], budget, rules=candidate_rules(args.lengths))
        moa = bits_per_byte(with_rules(cache["model"], {m: plan.params(m) for m in plan.rules}), cache["eval"])
        window = uniform_window(budget, seq)
        heads = cache["model"].blocks[0].attn.heads
        same = {m: {"alphas": (window,) * heads, "betas": (0.0,) * heads} for m in plan.rules}
        uniform = bits_per_byte(with_rules(cache["model"], same), cache["eval"])
        row = {"moa_density": plan.density[seq], "moa_bits_per_byte": moa, "uniform_window": window,
               "uniform_density": float(rule_densities(seq, [(window, 0.0)])[0]), "uniform_bits_per_byte": uniform,
               "dense_bits_per_byte": cache["dense"], "predicted_loss": plan.loss, "train_steps": cache["steps"],
               "rules": {m: [list(r) for r in rules] for m, rules in plan.rules.items()}}
        print(f"{budget:>7.2f} {row['moa_density']:>12.3f} {moa:>14.3f} {window:>15} {row['uniform_density']:>8.3f} "
              f"{uniform:>18.3f}")
        return row

    items = [{"budget": b} for b in args.budgets]
    config = {"steps": args.steps, "seconds": args.seconds, "lengths": args.lengths, "calibration": args.calibration,
              "seed": args.seed, "device": args.device}
    code, _ = run_items("moa", config, items, measure, args, describe=canonical)
    return code
