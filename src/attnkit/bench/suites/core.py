"""``attnkit bench core``: the softmax core against PyTorch's SDPA, and its memory.

1. Speed: ``attnkit.attention(q, k, v, "softmax")`` (and ``form="chunked"``)
   against a direct ``F.scaled_dot_product_attention`` call measured in the same
   run, causal and not, B=1, H=8, D=64, fp32. Reported: median seconds, the
   ratio ``t_sdpa / t_attnkit`` (target >= 0.95) and achieved GFLOP/s
   (FlashAttention's FLOP count) next to this run's fp32 GEMM GFLOP/s.
2. API overhead: the same comparison on a decode-size call (B=1, H=8, one
   query, 512 keys, D=64), where the Python around the kernel (validation,
   dispatch) is all that differs: loops of calls timed in turns, the overhead
   per call is the median of the paired differences, in microseconds, printed
   beside SDPA's own time per call (target: overhead <= 15 us).
3. Peak memory: in a fresh subprocess per configuration, the anonymous memory
   sampled during the call minus its level after the inputs are allocated
   (:func:`attnkit.bench.memory.peak_mb`), for the chunked exact path
   (forward, and forward + backward) and naive materialised attention. Naive
   runs whose estimated footprint exceeds ``--naive-max-gb`` are not run (the
   machine is shared); their figure is the estimate ``2 B H N^2`` floats (x3
   with backward), printed as "est." and checked against the measured sizes.
   Children run with a fixed glibc mmap threshold (see ``_measure``).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import statistics
import sys

import torch
import torch.nn.functional as F

from ..memory import MALLOC_ENV, peak_mb
from ..options import ints, positive_float, positive_int
from ..runner import run_items
from ..store import canonical
from ..timing import median_times, timings

B, H, D = 1, 8, 64
FULL_SIZES = [1024, 2048, 4096, 8192, 16384]
QUICK_SIZES = [512, 1024, 2048]
THREADS = 2


def _inputs(n: int, requires_grad: bool = False, device="cpu"):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, n, D, generator=g).to(device).requires_grad_(requires_grad) for _ in range(3)]


def speed(n: int, causal: bool, repeats: int, with_chunked: bool, device="cpu") -> dict:
    """Times of SDPA, ``attention(..., "softmax")`` and (``with_chunked``) its chunked form at ``n``, in turns."""
    import attnkit
    from attnkit.registry import dense_flops

    q, k, v = _inputs(n, device=device)
    fns = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
        "attnkit": lambda: attnkit.attention(q, k, v, "softmax", causal=causal),
    }
    if with_chunked:
        fns["chunked"] = lambda: attnkit.attention(q, k, v, "softmax", causal=causal, form="chunked")
    with torch.no_grad():
        t = dict(zip(fns, median_times(list(fns.values()), repeats)))
    flops = dense_flops(B, H, n, n, D, causal)
    row = {f"t_{k}": v for k, v in t.items()}
    row.update({f"gflops_{k}": flops / v / 1e9 for k, v in t.items()})
    row["ratio_attnkit"] = t["sdpa"] / t["attnkit"]
    if with_chunked:
        row["ratio_chunked"] = t["sdpa"] / t["chunked"]
    print(_speed_line({"n": n, "causal": causal, **row}), flush=True)
    return row


def _speed_line(r: dict) -> str:
    line = (
        f"N={r['n']:>6} {'causal' if r['causal'] else 'full  '}  sdpa {r['t_sdpa']*1e3:9.1f} ms "
        f"({r['gflops_sdpa']:5.1f} GF/s)  attnkit {r['t_attnkit']*1e3:9.1f} ms ({r['gflops_attnkit']:5.1f} GF/s)"
        f"  ratio {r['ratio_attnkit']:.3f}"
    )
    if "t_chunked" in r:
        line += f"  | chunked {r['t_chunked']*1e3:9.1f} ms ({r['gflops_chunked']:5.1f} GF/s) ratio {r['ratio_chunked']:.3f}"
    return line


OVERHEAD_SHAPE = (1, 8, 1, 512, 64)  # batch, heads, q_len, kv_len, head_dim: one decode step


def api_overhead(rounds: int = 21, calls: int = 200, device="cpu") -> dict:
    """Per-call overhead of ``attnkit.attention(q, k, v, "softmax")`` over a direct SDPA call, decode size."""
    import attnkit

    b, h, nq, nk, d = OVERHEAD_SHAPE
    q = torch.randn(b, h, nq, d, device=device)
    k, v = (torch.randn(b, h, nk, d, device=device) for _ in range(2))

    def loop(fn):
        def run():
            for _ in range(calls):
                fn()
        return run

    with torch.no_grad():
        sdpa, ours = timings([loop(lambda: F.scaled_dot_product_attention(q, k, v)),
                              loop(lambda: attnkit.attention(q, k, v, "softmax"))], rounds)
    per_call = 1e6 / calls
    out = {"sdpa_us": statistics.median(sdpa) * per_call, "attnkit_us": statistics.median(ours) * per_call,
           "overhead_us": statistics.median(o - s for o, s in zip(ours, sdpa)) * per_call,
           "shape": list(OVERHEAD_SHAPE)}
    print(f"API overhead, decode step (B, H, Nq, Nk, D) = {OVERHEAD_SHAPE}: sdpa {out['sdpa_us']:.1f} us, "
          f"attnkit {out['attnkit_us']:.1f} us, overhead {out['overhead_us']:.1f} us per call (target <= 15)",
          flush=True)
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


def memory(n: int, backward: bool, threads: int, naive_max_gb: float) -> dict:
    row = {"chunked_mb": _measure("chunked", n, backward, threads)}
    est = naive_estimate_mb(n, backward)
    row["naive_est_mb"] = est
    row["naive_mb"] = _measure("naive", n, backward, threads) if est / 1024 <= naive_max_gb else None
    naive = row["naive_mb"] if row["naive_mb"] is not None else est
    row["ratio"] = naive / max(row["chunked_mb"], 1.0)
    measured = f"{row['naive_mb']:9.1f} MB" if row["naive_mb"] is not None else f"{est:9.1f} MB est."
    print(
        f"N={n:>6} {'fwd+bwd' if backward else 'fwd    '}  chunked {row['chunked_mb']:8.1f} MB   "
        f"naive {measured} (est. {est:9.1f})   naive/chunked {row['ratio']:7.1f}x",
        flush=True,
    )
    return row


def _measure(path: str, n: int, backward: bool, threads: int) -> float:
    cmd = [sys.executable, "-m", "attnkit.bench.suites.core", "--child", path, str(n), str(int(backward)), str(threads)]
    # A fixed mmap threshold makes glibc return every large freed buffer to the OS; with its default
    # dynamic threshold, freed tile buffers stay in the heap and would be reused unseen.
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, **MALLOC_ENV})
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help=f"N in {QUICK_SIZES} instead of {FULL_SIZES}")
    parser.add_argument("--n", type=ints, default=None, help="comma list of sequence lengths")
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--no-chunked-speed", action="store_true", help="skip timing the chunked form")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses (CPU only)")
    parser.add_argument("--no-speed", action="store_true", help="skip the timings (memory only)")
    parser.add_argument("--naive-max-gb", type=positive_float, default=6.0, help="largest naive run to actually execute")


def run(args) -> int:
    sizes = args.n or (QUICK_SIZES if args.quick else FULL_SIZES)
    items = []
    if not args.no_speed:
        items.append({"section": "overhead"})
        items += [{"section": "speed", "N": n, "causal": c} for n in sizes for c in (False, True)]
    if not args.no_memory and args.device == "cpu":
        items += [{"section": "memory", "N": n, "backward": b} for n in sizes for b in (False, True)]
    config = {"sizes": sizes, "repeats": args.repeats, "chunked": not args.no_chunked_speed,
              "naive_max_gb": args.naive_max_gb, "device": args.device, "B": B, "H": H, "D": D}
    print(f"attnkit bench core: B={B} H={H} D={D} fp32, device {args.device}")

    def measure(item):
        if item["section"] == "overhead":
            return api_overhead(device=args.device)
        if item["section"] == "speed":
            return speed(item["N"], item["causal"], args.repeats, not args.no_chunked_speed, args.device)
        return memory(item["N"], item["backward"], torch.get_num_threads(), args.naive_max_gb)

    code, _ = run_items("core", config, items, measure, args, describe=canonical)
    return code


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), bool(int(sys.argv[4])), int(sys.argv[5]))
    else:
        raise SystemExit("usage: python -m attnkit.bench.suites.core --child PATH N BACKWARD THREADS")
