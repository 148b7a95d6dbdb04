"""``attnkit bench gla``: GLA's two-level chunked form against the one-level chunkwise form.

B=1, H=8, D=64, fp32, 1 thread by default (``--threads``). Both forms compute the
same function (``tests/conformance``); the one-level form is
:func:`attnkit.kernels.linear_scan.chunked` with 16-token chunks (GLA's chunked form
before the two-level kernel), timed in the same run, so every figure is a ratio:

1. forward at N (8192; ``--quick`` 2048), and forward + backward;
2. the two-level form over (chunk, sub-chunk) sizes, forward;
3. t(4N) / t(N) of the two-level form (linear in N).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ...kernels import linear_scan
from ...kernels.gla_chunked import gla_chunked
from ...registry import get
from ..options import positive_int
from ..runner import run_items
from ..store import canonical
from ..timing import median_seconds, median_times

B, H, D = 1, 8, 64
ONE_LEVEL_CHUNK = 16
THREADS = 1
SIZES = ((16, 4), (32, 2), (32, 4), (32, 8), (64, 4), (64, 16))


def _inputs(n: int, seed: int = 0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, D, generator=g) for _ in range(3))
    gk = F.logsigmoid(torch.randn(B, H, n, D, generator=g)) / 16  # GLAGate's tau = 16
    return tuple(t.to(device) for t in (q * D**-0.5, k, v, gk))


def _one_level(q, k, v, gk):
    return linear_scan.chunked(q, k, v, gk, None, causal=True, chunk_size=ONE_LEVEL_CHUNK)


def _two_level(q, k, v, gk, chunk_size=None, sub_chunk_size=None):
    chunk_size = chunk_size or get("gla").defaults["chunk_size"]
    return gla_chunked(q, k, v, gk, None, causal=True, chunk_size=chunk_size, sub_chunk_size=sub_chunk_size)


def _with_backward(form, inputs):
    leaves = [t.detach().requires_grad_() for t in inputs]

    def run():
        out, S = form(*leaves)
        (out.sum() + S.sum()).backward()

    return run


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="N=2048 instead of 8192")
    parser.add_argument("--n", type=positive_int, default=None, help="sequence length (default 8192, quick 2048)")
    parser.add_argument("--repeats", type=positive_int, default=3)


def run(args) -> int:
    n, r = args.n or (2048 if args.quick else 8192), args.repeats
    default = get("gla").defaults["chunk_size"]
    print(f"attnkit bench gla: B={B} H={H} D={D} fp32, {torch.get_num_threads()} threads, N={n}, {args.device}, "
          f"load average {os.getloadavg()[0]:.1f}; two-level default chunk {default}")
    x = _inputs(n, device=args.device)
    base = {}

    def one_level():
        if "forward" not in base:
            with torch.no_grad():
                base["forward"] = median_seconds(lambda: _one_level(*x), r)
        return base["forward"]

    def measure(item):
        if item["section"] == "forward":
            t1 = one_level()
            with torch.no_grad():
                t2 = median_seconds(lambda: _two_level(*x), r)
            print(f"forward:            one-level (chunk {ONE_LEVEL_CHUNK}) {t1 * 1e3:8.1f} ms, two-level "
                  f"{t2 * 1e3:8.1f} ms -> {t1 / t2:.1f}x faster")
            return {"one_level_s": t1, "two_level_s": t2, "speedup": t1 / t2}
        if item["section"] == "fwdbwd":
            b1 = median_seconds(_with_backward(_one_level, x), r)
            b2 = median_seconds(_with_backward(_two_level, x), r)
            print(f"forward + backward: one-level (chunk {ONE_LEVEL_CHUNK}) {b1 * 1e3:8.1f} ms, two-level "
                  f"{b2 * 1e3:8.1f} ms -> {b1 / b2:.1f}x faster")
            return {"one_level_s": b1, "two_level_s": b2, "speedup": b1 / b2}
        if item["section"] == "sizes":
            t1 = one_level()
            with torch.no_grad():
                t = median_seconds(lambda: _two_level(*x, item["chunk"], item["sub_chunk"]), r)
            print(f"  two-level chunk {item['chunk']:3d}, sub-chunk {item['sub_chunk']:2d}: {t * 1e3:8.1f} ms  "
                  f"({t1 / t:.1f}x the one-level form)")
            return {"two_level_s": t, "speedup": t1 / t}
        x4 = _inputs(4 * n, device=args.device)
        with torch.no_grad():
            t2, t4 = median_times([lambda: _two_level(*x), lambda: _two_level(*x4)], r)
        print(f"two-level N={4 * n}: {t4 * 1e3:.1f} ms -> t(4N)/t(N) = {t4 / t2:.2f} (linear: ~4)")
        return {"two_level_s": t2, "two_level_4n_s": t4, "t4n_over_tn": t4 / t2}

    items = ([{"section": "forward", "N": n}, {"section": "fwdbwd", "N": n}]
             + [{"section": "sizes", "N": n, "chunk": c, "sub_chunk": sc} for c, sc in SIZES]
             + [{"section": "scaling", "N": n}])
    code, _ = run_items("gla", {"N": n, "repeats": r, "device": args.device}, items, measure, args,
                        describe=canonical)
    return code
