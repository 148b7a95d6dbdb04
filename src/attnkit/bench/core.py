"""``attnkit bench core``: the softmax core against PyTorch's SDPA, and its memory.

1. Speed: ``attnkit.attention(q, k, v, "softmax")`` (and ``form="chunked"``)
   against a direct ``F.scaled_dot_product_attention`` call measured in the same
   run, causal and not, B=1, H=8, D=64, fp32. Reported: median seconds, the
   ratio ``t_sdpa / t_attnkit`` (target >= 0.95) and achieved GFLOP/s
   (FlashAttention's FLOP count) next to this run's fp32 GEMM GFLOP/s.
2. API overhead: the same comparison at a tiny size, where the Python around
   the kernel (validation, dispatch) is all that differs, in microseconds.
3. Peak memory: in a fresh subprocess per configuration, the anonymous memory
   sampled during the call minus its level after the inputs are allocated
   (:func:`._memory.peak_mb`), for the chunked exact path
   (forward, and forward + backward) and naive materialised attention. Naive
   runs whose estimated footprint exceeds ``--naive-max-gb`` are not run (the
   machine is shared); their figure is the estimate ``2 B H N^2`` floats (x3
   with backward), printed as "est." and checked against the measured sizes.
   Children run with a fixed glibc mmap threshold (see ``_measure``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from ._memory import MALLOC_ENV, peak_mb

B, H, D = 1, 8, 64
FULL_SIZES = [1024, 2048, 4096, 8192, 16384]
QUICK_SIZES = [512, 1024, 2048]


def _inputs(n: int, requires_grad: bool = False):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, n, D, generator=g).requires_grad_(requires_grad) for _ in range(3)]


def _median_times(fns: dict, repeats: int) -> dict:
    """Median wall time of each function; runs are interleaved (order alternating) so load changes hit all alike."""
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for i in range(repeats):
        for name, fn in (list(fns.items()) if i % 2 == 0 else list(fns.items())[::-1]):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def speed(sizes, repeats: int, with_chunked: bool) -> list[dict]:
    import attnkit
    from attnkit.registry import dense_flops

    rows = []
    for n in sizes:
        q, k, v = _inputs(n)
        for causal in (False, True):
            fns = {
                "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                "attnkit": lambda: attnkit.attention(q, k, v, "softmax", causal=causal),
            }
            if with_chunked:
                fns["chunked"] = lambda: attnkit.attention(q, k, v, "softmax", causal=causal, form="chunked")
            with torch.no_grad():
                t = _median_times(fns, repeats)
            flops = dense_flops(B, H, n, n, D, causal)
            row = {"n": n, "causal": causal, **{f"t_{k}": v for k, v in t.items()}}
            row.update({f"gflops_{k}": flops / v / 1e9 for k, v in t.items()})
            row["ratio_attnkit"] = t["sdpa"] / t["attnkit"]
            if with_chunked:
                row["ratio_chunked"] = t["sdpa"] / t["chunked"]
            rows.append(row)
            print(_speed_line(row), flush=True)
    return rows


def _speed_line(r: dict) -> str:
    line = (
        f"N={r['n']:>6} {'causal' if r['causal'] else 'full  '}  sdpa {r['t_sdpa']*1e3:9.1f} ms "
        f"({r['gflops_sdpa']:5.1f} GF/s)  attnkit {r['t_attnkit']*1e3:9.1f} ms ({r['gflops_attnkit']:5.1f} GF/s)"
        f"  ratio {r['ratio_attnkit']:.3f}"
    )
    if "t_chunked" in r:
        line += f"  | chunked {r['t_chunked']*1e3:9.1f} ms ({r['gflops_chunked']:5.1f} GF/s) ratio {r['ratio_chunked']:.3f}"
    return line


def api_overhead(repeats: int = 200) -> dict:
    import attnkit

    q, k, v = (torch.randn(1, 2, 16, 16) for _ in range(3))
    with torch.no_grad():
        t = _median_times(
            {
                "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                "attnkit": lambda: attnkit.attention(q, k, v, "softmax", causal=True),
            },
            repeats,
        )
    out = {"sdpa_us": t["sdpa"] * 1e6, "attnkit_us": t["attnkit"] * 1e6, "overhead_us": (t["attnkit"] - t["sdpa"]) * 1e6}
    print(f"API overhead at (1, 2, 16, 16): sdpa {out['sdpa_us']:.1f} us, attnkit {out['attnkit_us']:.1f} us, "
          f"overhead {out['overhead_us']:.1f} us per call", flush=True)
    return out


def naive_attention(q, k, v):
    """Materialised softmax attention: the full (N, N) score and weight matrices."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1) @ v


def naive_estimate_mb(n: int, backward: bool) -> float:
    """Scores and weights, 2 B H N^2 fp32 floats; autograd keeps about three such matrices."""
    return (3 if backward else 2) * B * H * n * n * 4 / 2**20


def child(path: str, n: int, backward: bool, threads: int) -> None:
    """Run one configuration in this (fresh) process and print its peak memory above the inputs."""
    torch.set_num_threads(threads)
    import attnkit

    q, k, v = _inputs(n, requires_grad=backward)
    def call():
        with torch.set_grad_enabled(backward):
            if path == "naive":
                out = naive_attention(q, k, v)
            else:
                out = attnkit.attention(q, k, v, "softmax", form="chunked")
            if backward:
                out.sum().backward()
            return out

    print(json.dumps({"peak_mb": peak_mb(call)[1]}))


def memory(sizes, threads: int, naive_max_gb: float) -> list[dict]:
    rows = []
    for n in sizes:
        for backward in (False, True):
            row = {"n": n, "backward": backward, "chunked_mb": _measure("chunked", n, backward, threads)}
            est = naive_estimate_mb(n, backward)
            row["naive_est_mb"] = est
            row["naive_mb"] = _measure("naive", n, backward, threads) if est / 1024 <= naive_max_gb else None
            naive = row["naive_mb"] if row["naive_mb"] is not None else est
            row["ratio"] = naive / max(row["chunked_mb"], 1.0)
            rows.append(row)
            measured = f"{row['naive_mb']:9.1f} MB" if row["naive_mb"] is not None else f"{est:9.1f} MB est."
            print(
                f"N={n:>6} {'fwd+bwd' if backward else 'fwd    '}  chunked {row['chunked_mb']:8.1f} MB   "
                f"naive {measured} (est. {est:9.1f})   naive/chunked {row['ratio']:7.1f}x",
                flush=True,
            )
    return rows


def _measure(path: str, n: int, backward: bool, threads: int) -> float:
    cmd = [sys.executable, "-m", "attnkit.bench.core", "--child", path, str(n), str(int(backward)), str(threads)]
    # A fixed mmap threshold makes glibc return every large freed buffer to the OS; with its default
    # dynamic threshold, freed tile buffers stay in the heap and would be reused unseen.
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, **MALLOC_ENV})
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attnkit bench core", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"N in {QUICK_SIZES} instead of {FULL_SIZES}")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="sequence lengths to run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-chunked-speed", action="store_true", help="skip timing the chunked form")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--no-speed", action="store_true", help="skip the timings (memory only)")
    parser.add_argument("--naive-max-gb", type=float, default=6.0, help="largest naive run to actually execute")
    parser.add_argument("--json", default=None, help="also write all figures to this JSON file")
    args = parser.parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    torch.set_num_threads(args.threads)
    from attnkit.machine import cpu_name, gemm_gflops

    gemm = gemm_gflops()
    print(f"attnkit bench core: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, "
          f"B={B} H={H} D={D}; fp32 GEMM {gemm:.1f} GFLOP/s (this run)", flush=True)
    results = {"gemm_gflops": gemm, "threads": args.threads, "sizes": sizes}
    if not args.no_speed:
        results["overhead"] = api_overhead()
        results["speed"] = speed(sizes, args.repeats, not args.no_chunked_speed)
    if not args.no_memory:
        results["memory"] = memory(sizes, args.threads, args.naive_max_gb)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), bool(int(sys.argv[4])), int(sys.argv[5]))
    else:
        raise SystemExit(main(sys.argv[1:]))
