"""Timing and peak memory, measured as BENCHMARKS.md says.

Time: median of ``repeats`` calls after ``warmup`` discarded calls, in the
current process (speed is always reported as a ratio to a baseline measured in
the same run). Peak memory: ``ru_maxrss`` of a fresh subprocess that builds the
inputs, records its peak so far, runs the call once and reports the growth.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import torch

from .. import attention, spec
from ..machine import median_seconds  # noqa: F401  (the benchmarks' timing loop; machine rates use it too)
from ._memory import MALLOC_ENV, peak_mb


def interleaved_medians(fns, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Median seconds of each of ``fns``, timed in turns (f0, f1, f0, f1, ...), so that a drift in the
    machine's speed (another process, the allocator's state) touches every one alike; for ratios."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def make_inputs(name: str, batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, seed: int = 0):
    """Random fp32 q, k, v and the mechanism's extra tensor inputs."""
    s = spec(name)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, head_dim, generator=g)
    k = torch.randn(batch, heads, kv_len, head_dim, generator=g)
    v = torch.randn(batch, heads, kv_len, head_dim, generator=g)
    extra = s.tensor_inputs(q, k, v, g) if s.tensor_inputs is not None else {}
    return q, k, v, extra


def attention_call(name: str, form: str | None, causal: bool, batch: int, heads: int, q_len: int, kv_len: int,
                   head_dim: int):
    """A no-grad closure running one forward of ``name`` (its ``form``) on fresh random inputs."""
    q, k, v, extra = make_inputs(name, batch, heads, q_len, kv_len, head_dim)

    def call():
        with torch.no_grad():
            return attention(q, k, v, name, causal=causal, form=form, **extra)

    return call


def peak_memory_mb(name: str, form: str | None, causal: bool, batch: int, heads: int, q_len: int, kv_len: int,
                   head_dim: int, threads: int | None = None, timeout: float = 600) -> float:
    """Peak resident memory one forward adds, in MiB, measured in a fresh subprocess."""
    args = [name, form or "", str(int(causal)), str(batch), str(heads), str(q_len), str(kv_len), str(head_dim),
            str(threads or torch.get_num_threads())]
    out = subprocess.run([sys.executable, "-m", "attnkit.bench._timing", *args], capture_output=True, text=True,
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
