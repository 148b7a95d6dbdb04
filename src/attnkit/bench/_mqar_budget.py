"""What the Zoology figure of ``attnkit bench mqar --figure`` costs, from training steps timed here.

For every role, width and (L, K) of the figure: the median CPU seconds of a few training steps
(batch, optimiser and model exactly as the figure trains them) and of one test-set evaluation, and
from them the core-seconds of one training that runs all its epochs (Zoology's early stop at 99%
ends solved runs sooner, so this is the most a point can cost). The total is the learning-rate
sweep plus every point for every seed. CPU time, not wall time: on a shared machine a process
waiting for a core is not charged, so the figures are core-seconds of work (with one thread, the
wall time on an idle core, up to the slowdown of caches shared with other work; on a GPU it does
not count the device's work, so this budget is for CPU runs). An fp32 GEMM is timed (wall clock)
before the steps of each width and (L, K), so the run says how loaded the machine was.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import torch

from ._mqar_data import mqar
from ._mqar_model import accuracy, optimizer, training_step
from .machine import gemm_gflops


def training_seconds(step_seconds: float, eval_seconds: float, config: dict) -> float:
    """Seconds of one training that runs every epoch: steps of each epoch plus its evaluation."""
    steps_per_epoch = math.ceil(config["train_examples"] / config["batch"])
    return config["epochs"] * (steps_per_epoch * step_seconds + eval_seconds)


def cpu_seconds(fn: Callable, repeats: int, warmup: int) -> float:
    """Median CPU seconds of this process over ``repeats`` calls of ``fn`` (after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def time_point(build: Callable[[int, int], torch.nn.Module], config: dict, d: int, seq_len: int, num_kv: int,
               steps: int = 3, device: str = "cpu") -> dict:
    """Median CPU seconds of a training step and of one evaluation of the test set, for one role at (d, L, K)."""
    torch.manual_seed(0)
    model = build(d, seq_len)
    opt = optimizer(model, lr=1e-3)
    inputs, targets = (t.to(device) for t in mqar(config["batch"], seq_len, num_kv, config["vocab"], seed=0))
    test = [t.to(device) for t in mqar(config["test_examples"], seq_len, num_kv, config["vocab"], seed=1)]
    step = cpu_seconds(lambda: training_step(model, opt, inputs, targets), steps, warmup=1)
    evaluate = cpu_seconds(lambda: accuracy(model, *test), 1, warmup=0)
    return {"step_s": round(step, 4), "eval_s": round(evaluate, 3),
            "training_s": round(training_seconds(step, evaluate, config), 1)}


def measure_budget(roles: list[dict], build: Callable[[dict, int, int], torch.nn.Module], config: dict,
                   steps: int = 3, device: str = "cpu", report: Callable[[dict], None] = print) -> list[dict]:
    """One row per (role, d, L, K), cheapest first (by width, then (L, K)): the timed step, evaluation
    and training, and the GEMM rate measured just before that (d, L, K)'s roles. ``report`` sees each
    row as it is measured."""
    rows = []
    for d in config["d_model"]:
        for seq_len, num_kv in config["settings"]:
            gflops = round(gemm_gflops(device=device), 1)
            for entry in roles:
                if entry["mechanism"] is None:
                    continue
                row = {"role": entry["role"], "mechanism": entry["mechanism"], "L": seq_len, "K": num_kv, "d": d,
                       **time_point(lambda d, L: build(entry, d, L), config, d, seq_len, num_kv, steps, device),
                       "gemm_gflops": gflops}
                report(row)
                rows.append(row)
    return rows


def figure_total(rows: list[dict], config: dict, sweep_lrs: int) -> dict:
    """Seconds of the whole figure if no training stops early: every point once per seed, and the
    learning-rate sweep's other rates (``sweep_lrs - 1`` trainings per role at the sweep's width and
    first (L, K): its training at the chosen rate is that point's first seed; none when that width was
    not timed)."""
    per_seed = sum(r["training_s"] for r in rows)
    width = config.get("sweep_width", config["d_model"][0])
    first = [r for r in rows if r["d"] == width and [r["L"], r["K"]] == list(config["settings"][0])]
    sweep = (sweep_lrs - 1) * sum(r["training_s"] for r in first)
    return {"per_seed_s": per_seed, "sweep_s": sweep, "total_s": per_seed * len(config["seeds"]) + sweep}
