"""``attnkit bench delta``: the delta rule's chunked (WY / UT) form against its token-by-token
recurrence and its parallel reference form, forward and forward + backward.

Prints times, the ratios against the chunked form measured in the same run, the
chunked form's achieved GFLOP/s beside this run's fp32 GEMM figure, and the state
size beside softmax attention's KV cache. Default problem: B=1, H=8, D=64, fp32,
N=8192 (``--quick``: N=2048, fewer repeats). The parallel form (a token loop over
materialised ``Dk x Dk`` transitions, O(N D^3)) is timed on the first 512 tokens
and scaled linearly to N, which the table says; ``--backward`` adds
forward + backward for the chunked and recurrent forms.
"""
from __future__ import annotations

import argparse

import torch

import attnkit
from attnkit.families.delta_rule import chunked_flops
from attnkit.families.delta_rule.forms_chunked import solve_block
from attnkit.machine import bmm_seconds, gemm_gflops
from attnkit.registry import kv_cache_size
from ._timing import median_seconds

MECHANISMS = ("deltanet", "gated_deltanet", "kda")
PARALLEL_TOKENS = 512


def _inputs(name, B, H, N, D):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, generator=g) for _ in range(3))
    spec = attnkit.spec(name)
    extra = {n: t.float() for n, t in spec.tensor_inputs(q.double(), k.double(), v.double(), g).items()}
    return q, k, v, extra



def _runner(name, form, q, k, v, extra, chunk_size, backward):
    leaves = [t.clone().requires_grad_(backward) for t in (q, k, v)]

    def run():
        with torch.set_grad_enabled(backward):
            out = attnkit.attention(*leaves, name, causal=True, form=form, chunk_size=chunk_size, **extra)
            if backward:
                out.sum().backward()

    return run


def matmul_seconds(heads, N, D, C) -> dict[str, float]:
    """The chunked form's matmuls (``families/delta_rule/chunked.py``), each shape timed on cache-resident
    operands: seconds per part, for ``heads`` (batch x heads) of ``N`` tokens and head dim ``D``."""
    chunks, per_chunk = heads * -(-N // C), -(-N // C)
    b = solve_block(C)
    blocks = C // b
    powers = 2 * max(0, (b - 1).bit_length() - 1)  # the diagonal blocks' Neumann products
    return {
        "K K^T, Q K^T": 2 * bmm_seconds(chunks, C, D, C),
        "UT solve": powers * bmm_seconds(chunks * blocks, b, b, b)
        + 2 * (blocks * (blocks + 1) // 2) * bmm_seconds(chunks, b, b, D),
        "W S, K^T U (in sequence)": per_chunk * (bmm_seconds(heads, C, D, D) + bmm_seconds(heads, D, C, D)),
        "Q S, P U": bmm_seconds(chunks, C, D, D) + bmm_seconds(chunks, C, C, D),
    }


def _print_floor(B, H, N, D, run_chunk, flops, gemm, recurrent):
    """How fast a chunked form made of torch matmuls could be: its matmuls alone, no other work, each
    shape at its cache-resident rate on this machine (for this run's and other chunk sizes), and its
    FLOPs at 100% of the large-GEMM rate."""
    print("  floor: the chunked form's matmuls alone, each shape timed on cache-resident operands:")
    for C in sorted({16, 32, 64, run_chunk}):
        parts = matmul_seconds(B * H, N, D, C)
        total = sum(parts.values())
        detail = ", ".join(f"{name} {t * 1e3:.1f}" for name, t in parts.items())
        print(f"    chunk {C:>3}: {total:.4f} s -> at most {recurrent / total:.1f}x the recurrence  ({detail} ms)")
    at_gemm = flops / gemm / 1e9
    print(f"    its {flops / 1e9:.2f} GFLOP at 100% of GEMM: {at_gemm:.4f} s -> at most {recurrent / at_gemm:.1f}x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="attnkit bench delta", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=2048 and fewer repeats")
    parser.add_argument("--mechanism", choices=MECHANISMS, default="deltanet")
    parser.add_argument("--seq", type=int, default=None, help="sequence length (default 8192, quick 2048)")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backward", action="store_true", help="also time forward + backward")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    B, H, D = 1, 8, 64
    N = args.seq or (2048 if args.quick else 8192)
    repeats = 3 if args.quick else 5
    name = args.mechanism
    spec = attnkit.spec(name)
    q, k, v, extra = _inputs(name, B, H, N, D)

    gemm = gemm_gflops()
    print(f"attnkit bench delta: {name}, B={B} H={H} N={N} D={D} fp32, {torch.get_num_threads()} threads, "
          f"chunk_size={args.chunk_size}; fp32 GEMM {gemm:.1f} GFLOP/s (this run)")
    chunked = median_seconds(_runner(name, "chunked", q, k, v, extra, args.chunk_size, False), repeats)
    # The token loop (thousands of tiny ops) varies 2x between runs on this machine: median of 3.
    recurrent = median_seconds(_runner(name, "recurrent", q, k, v, extra, args.chunk_size, False), 3)
    n_par = min(N, PARALLEL_TOKENS)
    head = [t[:, :, :n_par] for t in (q, k, v)]
    extra_head = {n: t[:, :, :n_par] for n, t in extra.items()}
    parallel = median_seconds(_runner(name, "reference", *head, extra_head, args.chunk_size, False), 1) * N / n_par
    print("\nforward")
    print(f"  {'form':<10} {'time (s)':>10} {'x chunked':>10}")
    for form, t in (("chunked", chunked), ("recurrent", recurrent), ("parallel", parallel)):
        note = f"  (timed on {n_par} tokens, scaled to {N})" if form == "parallel" and n_par < N else ""
        print(f"  {form:<10} {t:>10.4f} {t / chunked:>10.1f}{note}")
    flops = chunked_flops(B, H, N, D, args.chunk_size)
    rate = flops / chunked / 1e9
    print(f"  chunked: {rate:.1f} GFLOP/s on its own FLOP count = {100 * rate / gemm:.0f}% of GEMM; "
          f"{B * N / chunked:,.0f} tokens/s")
    _print_floor(B, H, N, D, args.chunk_size, flops, gemm, recurrent)
    if args.backward:
        chunked_b = median_seconds(_runner(name, "chunked", q, k, v, extra, args.chunk_size, True), repeats)
        recurrent_b = median_seconds(_runner(name, "recurrent", q, k, v, extra, args.chunk_size, True), 1)
        print("\nforward+backward")
        print(f"  chunked   {chunked_b:>10.4f} {1.0:>10.1f}")
        print(f"  recurrent {recurrent_b:>10.4f} {recurrent_b / chunked_b:>10.1f}")
    state = spec.state_size(B, H, H, N, D)
    print(f"\nstate after {N} tokens: {state:,} numbers (constant in N); "
          f"softmax KV cache: {kv_cache_size(B, H, H, N, D):,}")
    return 0
