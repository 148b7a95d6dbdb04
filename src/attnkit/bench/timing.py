"""The one timing loop of every benchmark, and the inputs and peak-memory probe the suites share.

Time: :func:`timings` runs each function ``warmup`` times, then ``repeats``
rounds in which every function runs once, in alternating order (f0 f1, f1 f0,
...), so that a drift in the machine's speed touches every function alike;
speed is always reported as a ratio to a baseline measured in the same run.
On a GPU it synchronises after every call. Peak memory: a fresh subprocess
builds the inputs, runs the call once and reports the growth (:mod:`.memory`).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Sequence

import torch

from .. import attention, spec
from .memory import MALLOC_ENV, peak_mb


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timings(fns: Sequence[Callable], repeats: int = 5, warmup: int = 1,
            budget: float | None = None) -> list[list[float]]:
    """Seconds of every call of each of ``fns``, timed in turns: ``[[f0 round 0, f0 round 1, ...], ...]``.

    A function whose warm-up call takes longer than ``budget`` seconds is not run again: that call
    is its only time (for sizes where one call takes minutes).
    """
    times: list[list[float]] = [[] for _ in fns]
    active = []
    for i, fn in enumerate(fns):
        for _ in range(warmup):
            t0 = time.perf_counter()
            fn()
            _synchronize()
            first = time.perf_counter() - t0
        if warmup and budget is not None and first > budget:
            times[i].append(first)
        else:
            active.append(i)
    for r in range(repeats):
        for i in (active if r % 2 == 0 else active[::-1]):
            t0 = time.perf_counter()
            fns[i]()
            _synchronize()
            times[i].append(time.perf_counter() - t0)
    return times


def median_times(fns: Sequence[Callable], repeats: int = 5, warmup: int = 1, budget: float | None = None) -> list[float]:
    """Median seconds of each of ``fns``, timed in turns (:func:`timings`)."""
    return [statistics.median(ts) for ts in timings(fns, repeats, warmup, budget)]


def median_seconds(fn: Callable, repeats: int = 5, warmup: int = 1, budget: float | None = None) -> float:
    """Median seconds of ``fn`` (:func:`timings` with one function)."""
    return median_times([fn], repeats, warmup, budget)[0]


def make_inputs(name: str, batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, seed: int = 0,
                device: str | torch.device = "cpu"):
    """Random fp32 q, k, v and the mechanism's extra tensor inputs, on ``device`` (drawn on the CPU from
    a seeded generator, so every device gets the same numbers)."""
    s = spec(name)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, head_dim, generator=g)
    k = torch.randn(batch, heads, kv_len, head_dim, generator=g)
    v = torch.randn(batch, heads, kv_len, head_dim, generator=g)
    extra = s.tensor_inputs(q, k, v, g) if s.tensor_inputs is not None else {}
    return (q.to(device), k.to(device), v.to(device), {n: t.to(device) for n, t in extra.items()})


def attention_call(name: str, form: str | None, causal: bool, batch: int, heads: int, q_len: int, kv_len: int,
                   head_dim: int, device: str | torch.device = "cpu"):
    """A no-grad closure running one forward of ``name`` (its ``form``) on fresh random inputs."""
    q, k, v, extra = make_inputs(name, batch, heads, q_len, kv_len, head_dim, device=device)

    def call():
        with torch.no_grad():
            return attention(q, k, v, name, causal=causal, form=form, **extra)

    return call


def peak_memory_mb(name: str, form: str | None, causal: bool, batch: int, heads: int, q_len: int, kv_len: int,
                   head_dim: int, threads: int | None = None, timeout: float = 600) -> float:
    """Peak resident memory one forward adds, in MiB, measured in a fresh subprocess (CPU)."""
    args = [name, form or "", str(int(causal)), str(batch), str(heads), str(q_len), str(kv_len), str(head_dim),
            str(threads or torch.get_num_threads())]
    out = subprocess.run([sys.executable, "-m", "attnkit.bench.timing", *args], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, **MALLOC_ENV})
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def _probe(argv: list[str]) -> None:
    name, form, causal, batch, heads, q_len, kv_len, head_dim, threads = argv
    torch.set_num_threads(int(threads))
    call = attention_call(name, form or None, bool(int(causal)), int(batch), int(heads), int(q_len), int(kv_len),
                          int(head_dim))
    _, peak = peak_mb(call)
    print(json.dumps({"peak_mb": round(peak, 1)}))


if __name__ == "__main__":
    _probe(sys.argv[1:])
