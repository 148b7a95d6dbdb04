"""``attnkit bench hybrid``: MQAR recall of linear:full layer ratios (the hybrid-linear study).

After "A Systematic Analysis of Hybrid Linear Attention" (language modelling stays flat across
linear:full ratios while recall improves markedly with more full-attention layers, above all
below 3:1; HGRN-2 and Gated DeltaNet recommended at 3:1 to 6:1): train a small model whose
mixer layers follow a schedule of linear (``L``) and full softmax (``F``) layers on MQAR and
report the best accuracy of the learning-rate sweep per linear mechanism and ratio.

The model is Zoology's MQAR model (:mod:`attnkit.bench._mqar_model`) deepened: embedding, a
``BaseConv`` block, then one pre-norm residual block per schedule letter (q/k/v projections,
the mechanism, output projection; no MLP), final norm, tied head. Each schedule has the same
number of mixer layers, so the ratios compare at equal depth and (softmax and the linear
mechanisms here having the same projections) equal parameters. ``--schedules LLLL,LLLF,LFLF,FFFF``
is 4:0, 3:1, 1:1 and 0:4; ``--linear hgrn2,gated_deltanet`` chooses the linear layers (the
Gated DeltaNet layer with its short convolutions and gated norm, as ``bench mqar`` builds it).
"""
from __future__ import annotations

from functools import partial

import torch

from ... import spec
from .._mqar_data import check_mqar_sizes, mqar
from .._mqar_model import BaseConv, Mixer, ResidualMixers, train
from ..options import floats, names, positive_int
from ..runner import run_items
from ..store import Store

# per linear mechanism: Mixer options (the Gated DeltaNet layer's pieces, as in bench mqar)
LAYER = {"gated_deltanet": {"qkv_conv": True, "gated_norm": True}}
QUICK = dict(vocab=128, d_model=64, heads=2, seq_len=64, num_kv=16, lrs=[3e-3, 1e-2], epochs=8,
             train_examples=5_000, test_examples=500, batch=64)


class HybridMQARModel(ResidualMixers):
    """Embedding, BaseConv block, one mixer block per schedule letter (pre-norm, residual, no MLP), tied head."""

    def __init__(self, schedule: str, mixers: dict, vocab: int, d_model: int, seq_len: int, heads: int):
        layers = [Mixer(mixers[letter], {}, d_model, heads, d_model // heads, seq_len, **LAYER.get(mixers[letter], {}))
                  for letter in schedule]
        super().__init__(vocab, d_model, [BaseConv(d_model), *layers])


def ratio(schedule: str) -> str:
    """``"LLLF"`` -> ``"3:1"`` (linear:full)."""
    return f"{schedule.count('L')}:{schedule.count('F')}"


def add_arguments(p) -> None:
    p.add_argument("--linear", type=names, default=["hgrn2"], help="comma list of linear mechanisms (default hgrn2)")
    p.add_argument("--schedules", type=names, default=["LLLL", "LLLF", "LFLF", "FFFF"],
                   help="comma list of layer schedules of L (linear) and F (softmax), all of one length")
    p.add_argument("--lrs", type=floats, default=None, help="comma list of learning rates (default 3e-3,1e-2)")
    p.add_argument("--epochs", type=positive_int, default=QUICK["epochs"])
    p.add_argument("--train-examples", type=positive_int, default=QUICK["train_examples"])
    p.add_argument("--jobs", type=positive_int, default=2, help="trainings run at once, each in its own process")


def configure(args) -> dict:
    """The configuration, validated before any work (unknown or non-causal mechanisms, bad schedules)."""
    for n in args.linear:
        if not spec(n).supports(causal=True, cross=False):  # spec() names close matches for unknown names
            raise ValueError(f"--linear: {n!r} does not support causal self-attention, which MQAR needs")
    lengths = {len(s) for s in args.schedules}
    bad = [s for s in args.schedules if set(s) - {"L", "F"}]
    if bad or len(lengths) != 1:
        raise ValueError(f"--schedules must be strings of L and F of one length, got {args.schedules}")
    config = dict(QUICK, linear=args.linear, schedules=args.schedules, epochs=args.epochs,
                  train_examples=args.train_examples)
    if args.lrs:
        config["lrs"] = args.lrs
    check_mqar_sizes(config["seq_len"], config["num_kv"], config["vocab"])
    return config


def plan(config: dict) -> list[dict]:
    items = []
    for linear in config["linear"]:
        for schedule in config["schedules"]:
            if "L" not in schedule and linear != config["linear"][0]:
                continue  # the all-softmax model does not depend on the linear mechanism: run it once
            items.extend({"linear": linear if "L" in schedule else "-", "schedule": schedule, "lr": lr}
                         for lr in config["lrs"])
    return items


def measure_item(item: dict, config: dict, device: str = "cpu") -> dict:
    L, K, V = config["seq_len"], config["num_kv"], config["vocab"]
    train_data = [t.to(device) for t in mqar(config["train_examples"], L, K, V, seed=0)]
    test_data = [t.to(device) for t in mqar(config["test_examples"], L, K, V, seed=1_000_003)]
    torch.manual_seed(0)
    model = HybridMQARModel(item["schedule"], {"L": item["linear"], "F": "softmax"}, V, config["d_model"], L,
                            config["heads"]).to(device)
    result = train(model, train_data, test_data, lr=item["lr"], epochs=config["epochs"], batch=config["batch"])
    result["parameters"] = sum(p.numel() for p in model.parameters())
    return result


def best_per_schedule(rows: list[dict]) -> list[dict]:
    best: dict[tuple, dict] = {}
    for r in rows:
        key = (r["linear"], r["schedule"])
        if key not in best or r.get("accuracy", -1) > best[key].get("accuracy", -1):
            best[key] = r
    return sorted(best.values(), key=lambda r: (r["linear"], -r["schedule"].count("L")))


def print_summary(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="hybrid MQAR: best accuracy of the learning-rate sweep per linear:full ratio")
    for col in ("linear", "schedule", "linear:full", "lr", "accuracy", "parameters", "epochs", "status", "s"):
        table.add_column(col)
    for r in best_per_schedule(rows):
        if "accuracy" not in r:
            table.add_row(r["linear"], r["schedule"], ratio(r["schedule"]), "-", r.get("error", "?"), "-", "-", "-", "-")
            continue
        table.add_row(r["linear"], r["schedule"], ratio(r["schedule"]), f"{r['lr']:g}", f"{r['accuracy']:.3f}",
                      str(r["parameters"]), str(r["epochs"]), r["status"], str(r["seconds"]))
    Console(width=140).print(table)


def run(args) -> int:
    config = configure(args)
    code, run_id = run_items("hybrid", config, plan(config), partial(measure_item, config=config, device=args.device),
                             args, describe=lambda it: f"{it['linear']} {it['schedule']} lr={it['lr']}",
                             jobs=args.jobs)
    print_summary(Store(args.db).rows(run_id))
    return code
