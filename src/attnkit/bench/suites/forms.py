"""``attnkit bench forms``: fast forms against their materialised definitions (Aaren, Mega-chunk, Local Linear Attention).

B=1, H=8, D=64, fp32; every speed figure is a ratio against a baseline measured
in the same run (and the run's fp32 GEMM rate is printed beside them):

1. ``aaren``: chunked and scan forms vs the materialised parallel form at N; the
   chunked form at 4N over N (linear); the decode step after 1k .. 64k tokens of
   context (flat) and its state beside softmax attention's KV cache;
2. ``mega``: Mega-chunk (``block_diagonal``, chunk 128) vs full Mega attention at N,
   and Mega-chunk at 4N over N (linear);
3. ``local_linear``: the blockwise form vs the materialised reference, vs softmax
   attention (same run), its FLOP/s on its own FLOP count over GEMM, and t(2N)/t(N)
   (quadratic: ~4).

The materialised forms run one head at a time to bound memory. ``--quick``
shrinks every length by 4.
"""
from __future__ import annotations

import os

import torch

from ... import attention, registry
from ..machine import machine_info
from ...registry import kv_cache_size
from .._decode import decode_flatness
from ..options import ints, positive_int
from ..runner import run_items
from ..timing import median_seconds

B, H, D = 1, 8, 64
THREADS = 2


def _qkv(n: int, seed: int = 0, heads: int = H, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, heads, n, D, generator=g).to(device) for _ in range(3)]


def _per_head(fn, q, k, v):
    def run():
        for h in range(q.shape[1]):
            fn(q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1])

    return run


def aaren(n: int, contexts: list[int], repeats: int, device="cpu") -> dict:
    forms = registry.get("aaren").stateful_forms
    run = lambda form, q, k, v, **kw: forms[form](q, k, v, causal=True, scale=D**-0.5, **kw)  # noqa: E731
    q, k, v = _qkv(n, device=device)
    t_par = median_seconds(_per_head(lambda *a: run("parallel", *a), q, k, v), max(1, repeats // 2))
    t_chunk = median_seconds(lambda: run("chunked", q, k, v), repeats)
    t_scan = median_seconds(lambda: run("scan", q, k, v), repeats)
    q4, k4, v4 = _qkv(4 * n, device=device)
    t_chunk4 = median_seconds(lambda: run("chunked", q4, k4, v4), repeats)
    print(f"aaren, N={n}: parallel {t_par * 1e3:.1f} ms, chunked {t_chunk * 1e3:.1f} ms ({t_par / t_chunk:.1f}x faster), "
          f"scan {t_scan * 1e3:.1f} ms ({t_par / t_scan:.1f}x faster)")
    print(f"aaren chunked, N={4 * n}: {t_chunk4 * 1e3:.1f} ms -> t(4N)/t(N) = {t_chunk4 / t_chunk:.2f} (linear: ~4)")
    print("  decode step (recurrent form) after a chunked prefill:")
    decode = decode_flatness(run, lambda length: _qkv(length, seed=1, device=device), contexts, 50)
    return {"parallel_s": t_par, "chunked_s": t_chunk, "scan_s": t_scan, "chunked_4n_s": t_chunk4,
            "chunked_speedup": t_par / t_chunk, "scan_speedup": t_par / t_scan, "t4n_over_tn": t_chunk4 / t_chunk,
            "decode": decode}


def mega(n: int, repeats: int, device="cpu") -> dict:
    chunk = {"chunk_size": 128}

    def timed(length, **kw):
        q, k, v = _qkv(length, seed=2, device=device)
        return median_seconds(lambda: attention(q, k, v, "mega", causal=True, **kw), repeats)

    t_full, t_blocks, t_blocks4 = timed(n), timed(n, **chunk), timed(4 * n, **chunk)
    print(f"\nmega softmax, N={n}: full attention {t_full * 1e3:.1f} ms, Mega-chunk (128) {t_blocks * 1e3:.1f} ms "
          f"({t_full / t_blocks:.1f}x faster)")
    print(f"mega Mega-chunk, N={4 * n}: {t_blocks4 * 1e3:.1f} ms -> t(4N)/t(N) = {t_blocks4 / t_blocks:.2f} (linear: ~4)")
    return {"full_s": t_full, "chunk_s": t_blocks, "chunk_4n_s": t_blocks4, "chunk_speedup": t_full / t_blocks,
            "t4n_over_tn": t_blocks4 / t_blocks}


def local_linear(n: int, repeats: int, gemm: float, device="cpu") -> dict:
    spec = registry.get("local_linear")

    def timed(length, form, mechanism="local_linear", per_head=False, reps=repeats):
        q, k, v = _qkv(length, seed=3, device=device)
        call = lambda q, k, v: attention(q, k, v, mechanism, causal=True, form=form)  # noqa: E731
        return median_seconds(_per_head(call, q, k, v) if per_head else (lambda: call(q, k, v)), reps)

    t_ref = timed(n, "reference", per_head=True, reps=max(1, repeats // 2))
    t_blk, t_blk2 = timed(n, "blockwise"), timed(2 * n, "blockwise")
    t_soft = timed(n, "chunked", mechanism="softmax")
    rate = spec.flops(B, H, n, n, D, True) / t_blk / 1e9
    print(f"\nlocal_linear, N={n}: reference {t_ref * 1e3:.1f} ms, blockwise {t_blk * 1e3:.1f} ms "
          f"({t_ref / t_blk:.1f}x faster); softmax (chunked) {t_soft * 1e3:.1f} ms -> LLA costs {t_blk / t_soft:.1f}x softmax")
    print(f"local_linear blockwise: {rate:.1f} GFLOP/s on its own FLOP count = {100 * rate / gemm:.0f}% of GEMM; "
          f"N={2 * n}: {t_blk2 * 1e3:.1f} ms -> t(2N)/t(N) = {t_blk2 / t_blk:.2f} (quadratic: ~4)")
    print(f"  decoding keeps the KV cache: {kv_cache_size(B, H, H, n, D):,} numbers after N={n}")
    return {"reference_s": t_ref, "blockwise_s": t_blk, "blockwise_2n_s": t_blk2, "softmax_chunked_s": t_soft,
            "blockwise_speedup": t_ref / t_blk, "cost_vs_softmax": t_blk / t_soft, "gflops": rate,
            "gemm_fraction": rate / gemm, "t2n_over_tn": t_blk2 / t_blk}


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="every length / 4")
    parser.add_argument("--n", type=positive_int, default=None,
                        help="Aaren's and Mega's length (default 8192, quick 2048); Local Linear Attention runs N/8")
    parser.add_argument("--contexts", type=ints, default=None,
                        help="comma list of Aaren's decode contexts (default 1024,4096,16384,65536; quick 1024,8192)")
    parser.add_argument("--repeats", type=positive_int, default=5)


def run(args) -> int:
    n = args.n or (2048 if args.quick else 8192)
    machine = machine_info(device=args.device)
    gemm = machine["gemm_gflops_fp32"]
    print(f"attnkit bench forms: B={B} H={H} D={D} fp32, {torch.get_num_threads()} threads, {args.device}, "
          f"fp32 GEMM {gemm:.1f} GFLOP/s (this run), load average {os.getloadavg()[0]:.1f}")
    contexts = args.contexts or ([1024, 8192] if args.quick else [1024, 4096, 16384, 65536])
    sections = {
        "aaren": lambda: aaren(n, contexts, args.repeats, args.device),
        "mega": lambda: mega(n, args.repeats, args.device),
        "local_linear": lambda: local_linear(max(1, n // 8), args.repeats, gemm, args.device),
    }

    def measure(item):
        with torch.no_grad():
            return sections[item["mechanism"]]()

    config = {"N": n, "contexts": contexts, "repeats": args.repeats, "device": args.device}
    code, _ = run_items("forms", config, [{"mechanism": m} for m in sections], measure, args, machine=machine,
                        describe=lambda it: it["mechanism"])
    return code
