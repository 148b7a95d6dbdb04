"""``attnkit bench lean``: LeanAttention's stream-K decode step against one SDPA call, 16k-128k context.

One decode step (one query per head) against a KV cache of ``n`` tokens, for
each batch size: ``attnkit.attention(q, k, v, "lean", causal=True)`` (the
stream-K form: the (batch, kv head, key tile) work cut into ``--workers``
equal runs, one thread each, partial softmax states merged exactly) and
``torch.nn.functional.scaled_dot_product_attention(q, k, v)`` on the same
tensors, timed in turns in one process (``sdpa_ratio`` > 1: LeanAttention is
faster). ``gb_per_s`` is the K and V bytes read per second by LeanAttention:
a decode step is bound by memory traffic. Each batch's crossover is the
smallest context from which LeanAttention stays faster. The load average is
printed with the rows: on a shared machine it says how far to trust them.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ... import attention
from .. import machine
from ..memory import require
from ..options import UsageError, ints, positive_int
from ..runner import run_items
from ..timing import median_times

THREADS = 2
COLUMNS = ("batch", "n", "heads", "kv_heads", "lean_ms", "sdpa_ms", "sdpa_ratio", "gb_per_s")


def add_arguments(p) -> None:
    p.add_argument("--n", type=ints, default=[16384, 32768, 65536, 131072], help="comma list of context lengths")
    p.add_argument("--batch", type=ints, default=[1, 8], help="comma list of batch sizes")
    p.add_argument("--heads", type=positive_int, default=8)
    p.add_argument("--kv-heads", type=positive_int, default=None, help="kv heads (GQA; default: --heads)")
    p.add_argument("--head-dim", type=positive_int, default=64)
    p.add_argument("--workers", type=positive_int, default=2, help="LeanAttention's workers (threads)")
    p.add_argument("--tile", type=positive_int, default=256, help="keys per unit of work")
    p.add_argument("--repeats", type=positive_int, default=7)


def run(args) -> int:
    kv_heads = args.kv_heads or args.heads
    if args.heads % kv_heads:
        raise UsageError(f"--heads {args.heads} is not a multiple of --kv-heads {kv_heads}")
    for b in args.batch:
        require(2.2 * _kv_bytes(b, kv_heads, max(args.n), args.head_dim), f"bench lean at batch {b}")
    torch.set_num_threads(args.threads)
    print(f"attnkit bench lean: H={args.heads} kv_heads={kv_heads} D={args.head_dim} fp32 threads={args.threads} "
          f"workers={args.workers}; GEMM {machine.gemm_gflops():.0f} GFLOP/s; load average {os.getloadavg()[0]:.1f}")
    config = {"n": args.n, "batch": args.batch, "heads": args.heads, "kv_heads": kv_heads, "head_dim": args.head_dim,
              "workers": args.workers, "tile": args.tile, "threads": args.threads, "repeats": args.repeats}
    items = [{"batch": b, "n": n} for b in args.batch for n in args.n]
    rows = []

    def measure(item):
        row = _measure(item["batch"], item["n"], args.heads, kv_heads, args)
        rows.append(row)
        print("  " + "  ".join(f"{c}={row[c]:.3g}" if isinstance(row[c], float) else f"{c}={row[c]}"
                               for c in COLUMNS), flush=True)
        return row

    code, _ = run_items("lean", config, items, measure, args, describe=lambda it: f"batch {it['batch']} n={it['n']}")
    for b in args.batch:
        print(f"batch {b}: crossover {_crossover([r for r in rows if r['batch'] == b])}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return code


def _kv_bytes(batch, kv_heads, n, head_dim):
    return 2 * batch * kv_heads * n * head_dim * 4


def _measure(B, n, H, Hkv, args) -> dict:
    g = torch.Generator().manual_seed(0)
    D = args.head_dim
    q = torch.randn(B, H, 1, D, generator=g)
    k, v = (torch.randn(B, Hkv, n, D, generator=g) for _ in range(2))

    def lean():
        return attention(q, k, v, "lean", causal=True, workers=args.workers, tile=args.tile)

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=Hkv != H)

    with torch.no_grad():
        err = (lean() - sdpa()).abs().max().item()
        if err > 1e-4:
            raise RuntimeError(f"LeanAttention and SDPA differ by {err:.2e} at batch {B}, n={n}")
        lean_t, sdpa_t = median_times([lean, sdpa], args.repeats, warmup=2)
    return dict(batch=B, n=n, heads=H, kv_heads=Hkv, lean_ms=lean_t * 1e3, sdpa_ms=sdpa_t * 1e3,
                sdpa_ratio=sdpa_t / lean_t, gb_per_s=_kv_bytes(B, Hkv, n, D) / lean_t / 1e9, max_abs_diff=err,
                load_average=os.getloadavg()[0])


def _crossover(rows) -> str:
    """The smallest context from which every longer one has LeanAttention faster than SDPA."""
    rows = sorted(rows, key=lambda r: r["n"])
    faster = [r["sdpa_ratio"] > 1 for r in rows]
    for i, r in enumerate(rows):
        if all(faster[i:]):
            return f"n = {r['n']} (LeanAttention faster from there on)"
    return "none: SDPA is at least as fast at every context measured"
