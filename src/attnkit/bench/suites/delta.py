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

import torch

import attnkit
from attnkit.families.delta_rule import chunked_flops
from attnkit.families.delta_rule.chunked import solve_block
from attnkit.registry import kv_cache_size

from ..machine import bmm_seconds, machine_info
from ..options import choices, positive_int
from ..runner import run_items
from ..timing import median_seconds

MECHANISMS = ("deltanet", "gated_deltanet", "kda")
THREADS = 2
PARALLEL_TOKENS = 512


def _inputs(name, B, H, N, D, device="cpu"):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, generator=g) for _ in range(3))
    spec = attnkit.spec(name)
    extra = {n: t.float().to(device) for n, t in spec.tensor_inputs(q.double(), k.double(), v.double(), g).items()}
    return q.to(device), k.to(device), v.to(device), extra



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
    floors = {}
    for C in sorted({16, 32, 64, run_chunk}):
        parts = matmul_seconds(B * H, N, D, C)
        total = floors[str(C)] = sum(parts.values())
        detail = ", ".join(f"{name} {t * 1e3:.1f}" for name, t in parts.items())
        print(f"    chunk {C:>3}: {total:.4f} s -> at most {recurrent / total:.1f}x the recurrence  ({detail} ms)")
    at_gemm = flops / gemm / 1e9
    print(f"    its {flops / 1e9:.2f} GFLOP at 100% of GEMM: {at_gemm:.4f} s -> at most {recurrent / at_gemm:.1f}x")
    return floors


def measure(name: str, N: int, chunk_size: int, backward: bool, repeats: int, gemm: float, device="cpu") -> dict:
    """Every form of ``name`` at ``N`` tokens: times, ratios to the chunked form, its GFLOP/s and floor."""
    B, H, D = 1, 8, 64
    spec = attnkit.spec(name)
    q, k, v, extra = _inputs(name, B, H, N, D, device)
    print(f"\n{name}, B={B} H={H} N={N} D={D} fp32, {torch.get_num_threads()} threads, chunk_size={chunk_size}")
    chunked = median_seconds(_runner(name, "chunked", q, k, v, extra, chunk_size, False), repeats)
    # The token loop (thousands of tiny ops) varies 2x between runs on this machine: median of 3.
    recurrent = median_seconds(_runner(name, "recurrent", q, k, v, extra, chunk_size, False), 3)
    n_par = min(N, PARALLEL_TOKENS)
    head = [t[:, :, :n_par] for t in (q, k, v)]
    extra_head = {n: t[:, :, :n_par] for n, t in extra.items()}
    parallel = median_seconds(_runner(name, "reference", *head, extra_head, chunk_size, False), 1) * N / n_par
    print("forward")
    print(f"  {'form':<10} {'time (s)':>10} {'x chunked':>10}")
    for form, t in (("chunked", chunked), ("recurrent", recurrent), ("parallel", parallel)):
        note = f"  (timed on {n_par} tokens, scaled to {N})" if form == "parallel" and n_par < N else ""
        print(f"  {form:<10} {t:>10.4f} {t / chunked:>10.1f}{note}")
    flops = chunked_flops(B, H, N, D, chunk_size)
    rate = flops / chunked / 1e9
    print(f"  chunked: {rate:.1f} GFLOP/s on its own FLOP count = {100 * rate / gemm:.0f}% of GEMM; "
          f"{B * N / chunked:,.0f} tokens/s")
    floors = _print_floor(B, H, N, D, chunk_size, flops, gemm, recurrent)
    row = {"chunked_s": chunked, "recurrent_s": recurrent, "parallel_s": parallel, "parallel_timed_tokens": n_par,
           "recurrent_over_chunked": recurrent / chunked, "gflops": rate, "gemm_fraction": rate / gemm,
           "floor_s": floors}
    if backward:
        chunked_b = median_seconds(_runner(name, "chunked", q, k, v, extra, chunk_size, True), repeats)
        recurrent_b = median_seconds(_runner(name, "recurrent", q, k, v, extra, chunk_size, True), 1)
        print("forward+backward")
        print(f"  chunked   {chunked_b:>10.4f} {1.0:>10.1f}")
        print(f"  recurrent {recurrent_b:>10.4f} {recurrent_b / chunked_b:>10.1f}")
        row.update(chunked_fwdbwd_s=chunked_b, recurrent_fwdbwd_s=recurrent_b)
    state = spec.state_size(B, H, H, N, D)
    print(f"state after {N} tokens: {state:,} numbers (constant in N); "
          f"softmax KV cache: {kv_cache_size(B, H, H, N, D):,}")
    row.update(state_numbers=state, kv_cache_numbers=kv_cache_size(B, H, H, N, D))
    return row


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="N=2048 and fewer repeats")
    parser.add_argument("--mechanisms", type=choices(MECHANISMS, "mechanism"), default=["deltanet"],
                        help=f"comma list from {','.join(MECHANISMS)} (default deltanet)")
    parser.add_argument("--n", type=positive_int, default=None, help="sequence length (default 8192, quick 2048)")
    parser.add_argument("--chunk-size", type=positive_int, default=64)
    parser.add_argument("--backward", action="store_true", help="also time forward + backward")
    parser.add_argument("--repeats", type=positive_int, default=None, help="timed calls per form (default 5, quick 3)")


def run(args) -> int:
    N = args.n or (2048 if args.quick else 8192)
    repeats = args.repeats or (3 if args.quick else 5)
    machine = machine_info(device=args.device)
    gemm = machine["gemm_gflops_fp32"]
    print(f"attnkit bench delta: fp32 GEMM {gemm:.1f} GFLOP/s (this run)")
    items = [{"mechanism": m, "N": N, "chunk_size": args.chunk_size} for m in args.mechanisms]
    config = {"mechanisms": args.mechanisms, "N": N, "chunk_size": args.chunk_size, "backward": args.backward,
              "repeats": repeats, "device": args.device}
    code, _ = run_items("delta", config, items,
                        lambda it: measure(it["mechanism"], N, args.chunk_size, args.backward, repeats, gemm, args.device),
                        args, machine=machine, describe=lambda it: it["mechanism"])
    return code
