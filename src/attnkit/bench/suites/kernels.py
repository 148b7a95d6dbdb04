"""``attnkit bench kernels``: the LongCA-style kernel matrix, pattern x N x (fwd, fwd+bwd).

Every (pattern, N) runs in two fresh subprocesses. The first measures attnkit's
peak memory per direction (:func:`attnkit.bench.memory.peak_mb` over one call: anonymous
memory sampled while it runs, minus the level before it), and SDPA's forward peak with the
equivalent boolean mask (made before the call, so not counted), with glibc told to
map every buffer so that no allocation hides in freed heap. The second, with
the default allocator as users run, measures in this order: the fp32 GEMM
rate; attnkit (``attnkit.attention`` with the pattern's mechanism) forward,
then forward+backward; then the baselines of the same run — SDPA with the
equivalent boolean mask (forward, and forward+backward with all heads in one call
where its masked backward's (H, N, N) matrices fit 6 GiB, otherwise in groups of heads
that do: one head at a time at N = 16384) and compiled FlexAttention with the equivalent BlockMask (forward
only: no backward on CPU). Times are medians after a warm-up; a call slower
than ``--budget`` seconds is timed once.

FLOPs follow LongCA / FlashAttention: forward = 4 * B * H * allowed pairs * D,
forward+backward = 3.5 x forward. Ratios > 1 mean attnkit is faster.

``flex_cap`` bounds ``flex_ratio`` for any tiled kernel built from torch ops: Flex's time over a
floor that does only the matmuls of the layout's non-empty tiles, at 100% of this run's GEMM rate,
plus one ``torch.exp`` per computed score at its cache-resident rate (no max, sum or rescaling).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

from ..memory import MALLOC_ENV, peak_mb, require
from ..options import Parser, add_common_arguments, choices, ints, positive_float, positive_int
from ..flex_cases import CASES as FLEX_CASES
from ..flex_cases import flex_case_rows
from ..patterns import DEFAULT, PATTERNS, QUICK
from ..runner import run_items
from ..store import Store
from ..timing import median_seconds

THREADS = 2
DIRECTIONS = ("fwd", "fwdbwd")
COLUMNS = ("pattern", "N", "direction", "seconds", "peak_mb", "mem_x_qkv", "sdpa_mem_ratio", "gflops", "gemm_ratio",
           "sdpa_ratio", "flex_ratio", "flex_cap", "density")
KEY = ("suite", "pattern", "n", "direction")  # what the worker's row repeats of the item's key
QUICK_N = [1024, 2048, 4096]


def add_arguments(p) -> None:
    p.add_argument("--quick", action="store_true", help=f"patterns {','.join(QUICK)} at N={','.join(map(str, QUICK_N))}")
    p.add_argument("--patterns", type=choices(PATTERNS, "pattern"), default=None,
                   help="comma list of patterns (`attnkit masks list`; default: the LongCA list)")
    p.add_argument("--n", type=ints, default=None, help="comma list of sequence lengths (default 16384)")
    p.add_argument("--directions", type=choices(DIRECTIONS, "direction"), default=list(DIRECTIONS),
                   help="comma list: fwd (forward), fwdbwd (forward + backward); default both")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--heads", type=positive_int, default=8)
    p.add_argument("--head-dim", type=positive_int, default=64)
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--budget", type=positive_float, default=20.0, help="seconds above which a call is timed once")
    p.add_argument("--no-sdpa", action="store_true", help="skip the SDPA + dense mask baseline")
    p.add_argument("--no-flex", action="store_true", help="skip the compiled FlexAttention baseline")
    p.add_argument("--flex-cases", type=choices(FLEX_CASES), default=[],
                   help=f"run these FlexAttention score_mod/mask_mod cases through attnkit.flex_attention against "
                        f"compiled FlexAttention on the same callables (alone unless --patterns is given): "
                        f"{','.join(FLEX_CASES)}")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")


def estimate_bytes(args, n: int) -> float:
    """What one worker holds at once: q, k, v, outputs and gradients, the block layout (per 128 x 128
    tile, a few bytes per head), and for SDPA (N <= 32768) the dense boolean mask and its float copy."""
    tensors = 10 * args.batch * args.heads * n * args.head_dim * 4
    layout = 4 * args.batch * args.heads * (-(-n // 128)) ** 2
    sdpa = 5 * args.batch * args.heads * n * n if not args.no_sdpa and n <= 32768 else 0
    return tensors + layout + sdpa


def run(args) -> int:
    patterns = args.patterns or ([] if args.flex_cases else QUICK if args.quick else DEFAULT)
    sizes = args.n or (QUICK_N if args.quick else [16384])
    directions = args.directions
    for n in sizes:
        require(estimate_bytes(args, n), f"bench kernels at N={n}, B={args.batch}, H={args.heads}, D={args.head_dim}")
    print(f"attnkit bench kernels: B={args.batch} H={args.heads} D={args.head_dim} fp32 threads={args.threads} "
          f"device={args.device}")
    config = {"patterns": patterns, "n": sizes, "directions": directions, "batch": args.batch, "heads": args.heads,
              "head_dim": args.head_dim, "threads": args.threads, "repeats": args.repeats, "budget": args.budget,
              "sdpa": not args.no_sdpa, "flex": not args.no_flex, "device": args.device, "flex_cases": args.flex_cases}
    patterns = [*patterns, *(f"flex:{c}" for c in args.flex_cases)]
    items = [{"pattern": name, "N": n, "direction": d} for n in sizes for name in patterns for d in directions]
    measured: dict = {}  # one worker measures every direction of a (pattern, N)

    def measure(item):
        key = (item["pattern"], item["N"])
        if key not in measured:
            measured[key] = {r["direction"]: r for r in _run_subprocess(args, *key)}
        if item["direction"] not in measured[key]:
            raise RuntimeError(f"the worker for {key[0]} N={key[1]} returned no {item['direction']} row")
        return {k: v for k, v in measured[key][item["direction"]].items() if k not in KEY}

    code, run_id = run_items("kernels", config, items, measure, args,
                             describe=lambda it: f"{it['pattern']} N={it['N']} {it['direction']}")
    rows = [r for r in Store(args.db).rows(run_id) if "seconds" in r]
    _print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return code


def _worker_argv(args, name: str, n: int) -> list[str]:
    argv = ["--worker", f"{name}:{n}", "--directions", ",".join(args.directions), "--batch", str(args.batch),
            "--heads", str(args.heads), "--head-dim", str(args.head_dim), "--repeats", str(args.repeats),
            "--budget", str(args.budget), "--threads", str(args.threads), "--device", args.device]
    return argv + (["--no-sdpa"] if args.no_sdpa else []) + (["--no-flex"] if args.no_flex else [])


def _run_subprocess(args, name, n) -> list[dict]:
    """Peak memory in one fresh process (glibc maps every buffer, so the probe sees each allocation), times
    in another with the default allocator, which is how users run (mapping every buffer slows every call)."""
    cmd = [sys.executable, "-m", "attnkit.bench.suites.kernels", *_worker_argv(args, name, n)]
    if args.device == "cpu":  # resident memory: a CPU figure
        mem = subprocess.run([*cmd, "--memory"], capture_output=True, text=True, env={**os.environ, **MALLOC_ENV})
    else:
        mem = subprocess.CompletedProcess(cmd, 0, "", "")
    res = subprocess.run(cmd, capture_output=True, text=True)
    peaks = {m["direction"]: m for m in _lines(mem.stdout, "MEM ")}
    rows = _lines(res.stdout, "ROW ")
    if res.returncode != 0 or mem.returncode != 0 or not rows:
        failed = res if res.returncode != 0 or not rows else mem
        print(f"  {name} N={n}: worker failed ({failed.returncode}): {failed.stderr.strip().splitlines()[-1:]}")
    for r in rows:
        peak = peaks.get(r["direction"], {})
        r["peak_mb"] = peak.get("peak_mb")
        r["mem_x_qkv"] = r["peak_mb"] / r.pop("qkv_mb") if r["peak_mb"] is not None else None
        if peak.get("sdpa_peak_mb") and r["peak_mb"] is not None:
            r["sdpa_peak_mb"] = peak["sdpa_peak_mb"]
            r["sdpa_mem_ratio"] = r["peak_mb"] / peak["sdpa_peak_mb"]
        print("  " + "  ".join(f"{c}={_fmt({**r, 'N': n}.get(c))}" for c in COLUMNS), flush=True)
    return rows


def _lines(stdout: str, tag: str) -> list[dict]:
    return [json.loads(line[len(tag):]) for line in stdout.splitlines() if line.startswith(tag)]


def _fmt(x):
    return "-" if x is None else (f"{x:.3g}" if isinstance(x, float) else str(x))


def _print_table(rows):
    if not rows:
        return
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in COLUMNS}
    print("\n" + "  ".join(c.rjust(widths[c]) for c in COLUMNS))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).rjust(widths[c]) for c in COLUMNS))


def _worker(args) -> int:
    import attnkit
    from attnkit.builders.mask_pipeline import dense_pattern, mask_of
    from attnkit.masks import build_layout, causal_mask, full_mask

    from ..machine import exp_seconds_per_element, gemm_gflops

    torch.set_num_threads(args.threads)
    name, n = args.worker.rsplit(":", 1)
    if name.startswith("flex:"):
        return flex_case_rows(args, name[len("flex:"):], int(n))
    n, pat = int(n), PATTERNS[name]
    B, H, D = args.batch, args.heads, args.head_dim
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, n, D, generator=g).to(args.device) for _ in range(3))
    params = pat.params(n)
    inputs = {name: t.to(args.device) for name, t in pat.inputs(B, H, n).items()}
    if pat.mechanism == "softmax":
        mask = causal_mask() if pat.causal else full_mask()
    else:
        mask = mask_of(attnkit.spec(pat.mechanism), q, k, causal=pat.causal, **params, **inputs)
    layout = build_layout(mask, batch=B, heads=H, q_len=n, kv_len=n, device=q.device)
    flops = layout.flops(D)
    qkv_mb = 3 * q.numel() * 4 / 2**20

    def ours(backward):
        for t in (q, k, v):
            t.grad = None
            t.requires_grad_(backward)
        out = attnkit.attention(q, k, v, pat.mechanism, causal=pat.causal, **params, **inputs)
        if backward:
            out.backward(torch.ones_like(out))
        return out

    if args.memory:  # this process runs with MALLOC_ENV: peaks only, one call per direction
        for direction in args.directions:
            with torch.set_grad_enabled(direction == "fwdbwd"):
                peaks = {"direction": direction, "peak_mb": peak_mb(lambda: ours(direction == "fwdbwd"))[1]}
            if direction == "fwd" and not args.no_sdpa and n <= 32768:  # SDPA's masked forward, mask made before
                dense = dense_pattern(mask, B, H, n, n, device=q.device).contiguous()
                with torch.no_grad():
                    peaks["sdpa_peak_mb"] = peak_mb(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense))[1]
                del dense
            print("MEM " + json.dumps(peaks), flush=True)
        return 0
    gemm = gemm_gflops(device=args.device)
    floor = layout.computed_pairs * (4 * D / (gemm * 1e9) + exp_seconds_per_element())
    print(f"{name} N={n}: layout ready, timing attnkit", file=sys.stderr, flush=True)
    results = {}
    for direction in args.directions:
        backward = direction == "fwdbwd"
        with torch.set_grad_enabled(backward):
            t = median_seconds(lambda: ours(backward), args.repeats, budget=args.budget)
        results[direction] = dict(seconds=t, flops=flops * (3.5 if backward else 1.0))
    print(f"{name} N={n}: timing baselines", file=sys.stderr, flush=True)
    dense = None if args.no_sdpa or n > 32768 else dense_pattern(mask, B, H, n, n, device=q.device).contiguous()
    flex = None if args.no_flex else _flex(mask, B, H, n, q, k, v, args)
    heads_per_call = _sdpa_backward_heads(B, H, n)
    for direction, r in results.items():
        backward = direction == "fwdbwd"
        sdpa_t = None
        if dense is not None:
            def sdpa():
                for t in (q, k, v):
                    t.grad = None
                    t.requires_grad_(backward)
                if not backward:
                    return F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
                for h in range(0, H, heads_per_call):
                    sl = slice(h, h + heads_per_call)
                    out = F.scaled_dot_product_attention(q[:, sl], k[:, sl], v[:, sl], attn_mask=dense)
                    out.backward(torch.ones_like(out))

            with torch.set_grad_enabled(backward):
                sdpa_t = median_seconds(sdpa, args.repeats, budget=args.budget)
        flex_t = flex if (flex is not None and not backward) else None
        gf = r["flops"] / r["seconds"] / 1e9
        row = dict(suite="kernels", pattern=name, n=n, direction=direction, seconds=r["seconds"],
                   qkv_mb=qkv_mb, gflops=gf, gemm_gflops=gemm,
                   gemm_ratio=gf / gemm, sdpa_ratio=sdpa_t / r["seconds"] if sdpa_t else None,
                   flex_ratio=flex_t / r["seconds"] if flex_t else None,
                   flex_cap=flex_t / floor if flex_t else None, floor_seconds=floor, density=layout.density,
                   batch=B, heads=H, head_dim=D, threads=args.threads,
                   sdpa_bwd_heads_per_call=heads_per_call if backward and sdpa_t else None)
        print("ROW " + json.dumps(row), flush=True)
    return 0


# SDPA's masked math backward keeps about four fp32 (heads, N, N) matrices alive (scores, weights
# and their gradients). All heads go in one call when that fits this budget; otherwise the fewest
# calls that do (one head at a time at N = 16384), which costs nothing measurable at that size.
SDPA_BACKWARD_BYTES = 6 * 2**30


def _sdpa_backward_heads(B: int, H: int, n: int) -> int:
    """Heads per SDPA call in the forward+backward baseline: as many as fit ``SDPA_BACKWARD_BYTES``."""
    per_head = 4 * 4 * B * n * n
    return max(1, min(H, SDPA_BACKWARD_BYTES // per_head))


def _flex(mask, B, H, n, q, k, v, args):
    """Compiled FlexAttention forward with the same mask as a BlockMask; None if it cannot run."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        block_mask = create_block_mask(lambda b, h, qi, ki: mask(b, h, qi, ki), B, H, n, n, device=q.device)
        compiled = torch.compile(flex_attention)
        q, k, v = (t.detach() for t in (q, k, v))
        with torch.no_grad():
            compiled(q, k, v, block_mask=block_mask)  # compile (~17 s on CPU) outside the timing
            return median_seconds(lambda: compiled(q, k, v, block_mask=block_mask), args.repeats, budget=args.budget)
    except Exception as exc:  # a mask the compiler cannot trace: report, keep the other columns
        print(f"flex unavailable for this pattern: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
        return None


def _worker_main(argv: list[str]) -> int:
    """``python -m attnkit.bench.suites.kernels --worker PATTERN:N ...``: one (pattern, N), rows on stdout."""
    p = Parser(prog="attnkit bench kernels worker")
    add_arguments(p)
    add_common_arguments(p, threads=THREADS)
    p.add_argument("--worker", required=True)
    p.add_argument("--memory", action="store_true", help="peaks only (run under MALLOC_ENV)")
    return _worker(p.parse_args(argv))


def report(run: dict, rows: list[dict]) -> tuple[str, dict]:
    """The kernel matrix (rows of ``attnkit bench kernels``): attnkit against the SDPA and compiled
    FlexAttention baselines of the same run, whose times are attnkit's times times the stored ratios."""
    from ..report import plots
    from ..report.parts import errors, gemm_note, image, to_html

    rows = [{k: v for k, v in r.items() if k not in ("suite", "n")} for r in rows]  # older runs repeated the key
    lines = []
    for r in rows:
        if "seconds" not in r:
            continue
        where = {"pattern": r["pattern"], "N": r["N"], "direction": r["direction"]}
        mechanism = PATTERNS[r["pattern"]].mechanism if r["pattern"] in PATTERNS else r["pattern"]
        lines.append({**where, "mechanism": mechanism, "seconds": r["seconds"], "peak_mb": r.get("peak_mb"),
                      "fraction_of_gemm": r.get("gemm_ratio")})
        for base in ("sdpa", "flex"):
            if r.get(f"{base}_ratio"):
                lines.append({**where, "mechanism": base, "seconds": r["seconds"] * r[f"{base}_ratio"],
                              "peak_mb": r.get("sdpa_peak_mb") if base == "sdpa" else None})
    figures = plots.speed_memory_gemm(lines, what="kernel matrix", style="direction",
                                      gemm_note=gemm_note([r.get("gemm_gflops") for r in rows], run))
    parts = [image(uri, alt) for uri, alt in figures] + [to_html(rows), errors(rows)]
    return "\n".join(parts), {"kernels": rows}


if __name__ == "__main__":
    raise SystemExit(_worker_main(sys.argv[1:]))
