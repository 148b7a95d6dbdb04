"""Pieces of one kernel call run on worker threads, one intra-op thread each.

On a CPU, a kernel made of many torch ops pays a parallel region (a fork and
a barrier) per op when each op is spread over the intra-op threads; on a
shared machine every barrier waits for the slowest, possibly descheduled,
thread. Independent pieces of work (LeanAttention's per-worker runs, the
block-sparse kernel's groups of query blocks) can instead run on as many
threads, each op single-threaded: one fork and one join per call. Torch ops
release the GIL, so Python threads run them in parallel.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import torch

_POOLS: dict[int, ThreadPoolExecutor] = {}


def run_in_threads(work: Callable, pieces: Sequence) -> list:
    """``[work(p) for p in pieces]``, each on its own worker thread with one intra-op thread and no autograd;
    the caller's intra-op thread count is restored."""
    threads = torch.get_num_threads()
    pool = _POOLS.get(len(pieces))
    if pool is None:
        pool = _POOLS[len(pieces)] = ThreadPoolExecutor(len(pieces), thread_name_prefix="attnkit-worker")

    def single_threaded(piece):
        torch.set_num_threads(1)
        with torch.no_grad():
            return work(piece)

    try:
        return [f.result() for f in [pool.submit(single_threaded, p) for p in pieces]]
    finally:
        torch.set_num_threads(threads)


def balance(costs: Sequence[float], workers: int) -> list[list[int]]:
    """Indices of ``costs`` dealt to ``workers`` lists, largest first to the least loaded (greedy)."""
    loads, parts = [0.0] * workers, [[] for _ in range(workers)]
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        w = loads.index(min(loads))
        parts[w].append(i)
        loads[w] += costs[i]
    return [p for p in parts if p]
