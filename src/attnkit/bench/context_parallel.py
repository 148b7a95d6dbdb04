"""One context-parallel call measured on every rank: bytes sent (counted and analytic), peak memory, time.

Used by ``attnkit bench distributed``. Each strategy's analytic count is what its
algorithm must send per rank for one forward + backward (the shape check every
call starts with included); :func:`attnkit.distributed.count_bytes` counts what
the collectives were actually given. Ranks run in fresh (spawned) processes, so
anonymous RSS growth follows the tensors a call allocates.
"""
from __future__ import annotations

import datetime
import os
import time

import torch
import torch.distributed as dist

import attnkit

from ..distributed import (Sharding, allgather_attention, burst_attention, count_bytes, lasp2_attention, ring_attention,
                           star_attention, ulysses_attention)
from .memory import MALLOC_ENV, anon_rss_mb

B, H, D = 1, 8, 64
FP32 = 4
CHECK_FACTS = {"ring": 8, "burst": 8, "allgather": 8, "ulysses": 7, "lasp2": 7, "star": 7}  # int64 shape facts
# every call all-gathers first
LASP2_MECHANISM = "linear"
STAR_QUERY = 64  # Star Attention: query tokens after the N context tokens
CONTIGUOUS = ("lasp2", "allgather", "star")
# The tensors of one shard's size (B, H, N / P, D) a rank cannot do without, beyond the 8 a single-process
# O(N)-memory call holds at N (q, k, v, out, dout, dq, dk, dv): ring (double-buffered, as in backward) K and V
# being computed with and K and V arriving, dK and dV arriving and leaving; Ulysses the head-sharded q, k, v, out
# its inner attention keeps for backward. Allocating exactly these measures each strategy's memory floor.
FLOOR_UNITS = {"ring_floor": 8 + 8, "ulysses_floor": 8 + 4}


def analytic_bytes(strategy: str, n: int, world: int) -> int:
    """Bytes one rank sends for one causal forward + backward at sequence length ``n`` (fp32, B, H, D)."""
    if world == 1:
        return 0
    local = B * H * (n // world) * D * FP32  # one of q, k, v, out or their gradients on one rank
    rows = B * H * (n // world) * FP32  # one value per query row (lse, D = rowsum(dO * O))
    check = 8 * CHECK_FACTS[strategy] * (world - 1)
    if strategy == "ring":  # K and V forward and backward (P - 1 hops each), dK and dV P hops
        return 2 * (world - 1) * 2 * local + world * 2 * local + check
    if strategy == "burst":  # K, V forward; Q, dO, D, lse backward (P - 1 hops each); dQ P hops
        return (world - 1) * (4 * local + 2 * rows) + world * local + check
    if strategy == "allgather":  # K, V all-gathered; their gathered gradients (P shards) all-reduced
        return 2 * local * (world - 1) + 2 * (2 * world * local * (world - 1) // world) + check
    if strategy == "star":  # rank 0: anchor K, V broadcast; the query's outputs and lse all-gathered;
        query = B * H * STAR_QUERY * D * FP32  # backward: anchor dK, dV and the query's dq, dk, dv all-reduced
        gathered = (query + B * H * STAR_QUERY * FP32) * (world - 1)
        reduced = 2 * (2 * local * (world - 1) // world) + 3 * (2 * query * (world - 1) // world)
        return 2 * local * (world - 1) + gathered + reduced + check
    if strategy == "ulysses":  # q, k, v, out forward; dout, dq, dk, dv backward; (P - 1) / P of each leaves
        return 8 * local * (world - 1) // world + check
    if strategy == "lasp2":  # linear attention: state D x (D + 1), gathered forward, all-reduced backward
        state = B * H * D * (D + 1) * FP32
        return state * (world - 1) + 2 * world * state * (world - 1) // world + check
    raise ValueError(f"unknown strategy {strategy!r}")


def _call(strategy: str, n: int, world: int, overlap: bool):
    """A function running one forward + backward of ``strategy`` on this rank's shard."""
    g = torch.Generator().manual_seed(0)
    layout = "contiguous" if strategy in CONTIGUOUS else "zigzag"
    sh = Sharding(n, layout=layout, rank=dist.get_rank() if world > 1 else 0, world_size=world)
    q, k, v = (sh.shard(torch.randn(B, H, n, D, generator=g)) for _ in range(3))
    query = [torch.randn(B, H, STAR_QUERY, D, generator=g) for _ in range(3)]
    if strategy == "lasp2":
        q, k = q.abs(), k.abs()
    if strategy == "single_star":  # the context and the query in one causal call
        q, k, v = (torch.cat([t, s], dim=2) for t, s in zip((q, k, v), query))

    if strategy in FLOOR_UNITS:
        def floor():
            held = [torch.ones_like(q) for _ in range(FLOOR_UNITS[strategy])]
            return len(held)

        return floor

    def run():
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        if strategy in ("single", "single_star"):
            out = attnkit.attention(*leaves, "softmax", causal=True)
        elif strategy == "single_linear":
            out = attnkit.attention(*leaves, LASP2_MECHANISM, causal=True)
        elif strategy == "ring":
            out = ring_attention(*leaves, causal=True, overlap=overlap)
        elif strategy == "burst":
            out = burst_attention(*leaves, causal=True, overlap=overlap)
        elif strategy == "allgather":
            out = allgather_attention(*leaves, causal=True, layout=layout)
        elif strategy == "star":
            context_out, query_out = star_attention(*leaves, *[t.clone().requires_grad_() for t in query])
            out = torch.cat([context_out, query_out], dim=2)
        elif strategy == "ulysses":
            out = ulysses_attention(*leaves, causal=True, layout=layout)
        else:
            out = lasp2_attention(*leaves, LASP2_MECHANISM, causal=True)
        out.sum().backward()

    return run


def measure_rank(rank: int, world: int, port: int, jobs: list[dict], repeats: int, results) -> None:
    """Run every job on this rank; rank 0 puts ``(job, figures)`` on ``results`` (maxima over ranks)."""
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=120))
    try:
        for job in jobs:
            run = _call(job["strategy"], job["N"], world, job.get("overlap", True))
            with count_bytes() as traffic:
                run()  # warm-up and the byte count of one call
            before = anon_rss_mb()
            peak = [before]
            run_timed = _sampled(run, peak)
            times = []
            for _ in range(repeats):
                if world > 1:
                    dist.barrier()
                start = time.perf_counter()
                run_timed()
                times.append(time.perf_counter() - start)
            mine = torch.tensor([peak[0] - before, sorted(times)[len(times) // 2], float(traffic.sent)],
                                dtype=torch.float64)
            if world > 1:
                dist.all_reduce(mine, op=dist.ReduceOp.MAX)
            if rank == 0:
                results.put((job, {"peak_mb": mine[0].item(), "seconds": mine[1].item(), "bytes": int(mine[2])}))
    finally:
        if world > 1:
            dist.destroy_process_group()
        results.close()
        results.join_thread()


def _sampled(fn, peak):
    """``fn`` with a thread sampling anonymous memory into ``peak[0]`` while it runs."""
    import threading

    def run():
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], anon_rss_mb())
                stop.wait(0.001)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            fn()
        finally:
            stop.set()
            thread.join()
            peak[0] = max(peak[0], anon_rss_mb())

    return run


def run_processes(world: int, jobs: list[dict], repeats: int) -> list[tuple[dict, dict]]:
    """``measure_rank`` on ``world`` forked processes; the figures of every job."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fresh processes: a forked one would reuse its parent's freed heap without growing its RSS
    os.environ.update(MALLOC_ENV)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=measure_rank, args=(r, world, port, jobs, repeats, results)) for r in range(world)]
    for p in procs:
        p.start()
    got = [results.get(timeout=600) for _ in jobs]
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RuntimeError(f"bench distributed: a rank of {world} exited with code {p.exitcode}")
    return got


def environment() -> str:
    return f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}"
