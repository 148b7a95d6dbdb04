"""``attnkit bench linear``: the recurrent mechanisms' forms, scaling, decoding and state size.

At B=1, H=8, D=64, fp32, every figure a ratio against a
baseline measured in this run:

1. chunked vs parallel form of causal linear attention at N (target >= 10x);
2. chunked time at 4N over N (linear: target <= 4.6);
3. chunked causal linear attention's FLOP/s (its own FLOP count, ``spec.flops``)
   over this run's fp32 GEMM FLOP/s (target >= 30%);
4. every registered delta-rule mechanism: chunked vs token-by-token recurrence (target >= 20x);
5. decode step time and state size after 1k .. 64k tokens of context (flat within 25%);
6. each recurrent mechanism's state size beside softmax attention's KV cache at N.

The parallel form materialises ``(N, N)`` per head; it runs one head at a time
to bound memory (the FLOPs are the same). ``--quick`` shrinks the lengths.
"""
from __future__ import annotations

import os

import torch

from ... import registry
from ..machine import machine_info
from ...registry import kv_cache_size
from .._decode import decode_flatness
from ..options import ints, positive_int
from ..runner import run_items
from ..store import canonical
from ..timing import median_seconds, median_times

B, H, D = 1, 8, 64
DELTA_RULES = ("deltanet", "gated_deltanet", "kda")
THREADS = 2



def _inputs(spec, n: int, head_dim: int = D, seed: int = 0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, head_dim, generator=g) for _ in range(3))
    extra = spec.tensor_inputs(q, k, v, g) if spec.tensor_inputs is not None else {}
    return q.to(device), k.to(device), v.to(device), {name: t.to(device) for name, t in extra.items()}


def _form(spec, name, q, k, v, extra, **kw):
    params = {**spec.defaults, **extra, **kw}
    return spec.stateful_forms[name](q, k, v, causal=True, scale=q.shape[-1] ** -0.5, **params)


def _per_head(extra, spec, h):
    return {n: (t[:, h : h + 1] if n in spec.tensor_inputs_per_token else t) for n, t in extra.items()}


def forms_and_scaling(n: int, repeats: int, gemm: float, device="cpu") -> dict:
    spec = registry.get("linear")
    q, k, v, extra = _inputs(spec, n, device=device)

    def parallel():
        for h in range(H):
            _form(spec, "parallel", q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1], _per_head(extra, spec, h))

    # The chunked form first (the parallel form's (N, N) buffers leave glibc's heap in another state),
    # N and 4N in turns so that both see the same machine.
    q4, k4, v4, extra4 = _inputs(spec, 4 * n, device=device)
    t_chunk, t_chunk4 = median_times(
        [lambda: _form(spec, "chunked", q, k, v, extra), lambda: _form(spec, "chunked", q4, k4, v4, extra4)],
        max(repeats, 7),
    )
    t_par = median_seconds(parallel, max(3, repeats // 2))
    gflops = spec.flops(B, H, n, n, D, True) / t_chunk / 1e9
    print(f"linear (elu+1), causal, N={n}: parallel {t_par * 1e3:.1f} ms, chunked {t_chunk * 1e3:.1f} ms "
          f"-> chunked {t_par / t_chunk:.1f}x faster (target >= 10x)")
    print(f"linear chunked, N={4 * n}: {t_chunk4 * 1e3:.1f} ms -> t(4N)/t(N) = {t_chunk4 / t_chunk:.2f} (target <= 4.6)")
    print(f"linear chunked: {gflops:.1f} GFLOP/s on its own FLOP count = {100 * gflops / gemm:.0f}% of GEMM "
          f"(target >= 30%)")
    return {"parallel_s": t_par, "chunked_s": t_chunk, "chunked_4n_s": t_chunk4, "chunked_speedup": t_par / t_chunk,
            "t4n_over_tn": t_chunk4 / t_chunk, "gflops": gflops, "gemm_fraction": gflops / gemm}


def chunked(name: str, n: int, repeats: int, device="cpu") -> dict:
    """Forward time of one causal recurrent mechanism's default long form (``chunked``; Hyena's ``fft``);
    delta rules also against their recurrence."""
    spec = registry.get(name)
    q, k, v, extra = _inputs(spec, n, 16 if name == "based" else D, device=device)
    form = spec.default_forms[0]
    t = median_seconds(lambda: _form(spec, form, q, k, v, extra), repeats)
    line, row = f"  {name:<26} {t * 1e3:9.1f} ms" + ("" if form == "chunked" else f" ({form})"), {"chunked_s": t}
    if name in DELTA_RULES:
        t_rec = median_seconds(lambda: _form(spec, "recurrent", q, k, v, extra), 3)
        line += f"   recurrent {t_rec * 1e3:.1f} ms -> chunked {t_rec / t:.1f}x faster (target >= 20x)"
        row.update(recurrent_s=t_rec, chunked_speedup=t_rec / t)
    print(line)
    return row


def stateful_causal() -> list[str]:
    """The registered mechanisms with stateful forms and causal self-attention."""
    return [n for n in registry.names()
            if registry.get(n).stateful_forms is not None and "causal-self" in registry.get(n).patterns]


def decode(contexts: list[int], steps: int, device="cpu") -> dict:
    spec = registry.get("linear")
    print("\ndecode step (linear, recurrent form) after a chunked prefill:")

    def run(form, q, k, v, **kw):
        return _form(spec, form, q, k, v, {}, **kw)  # elu+1 linear attention has no tensor inputs

    return decode_flatness(run, lambda n: _inputs(spec, n, seed=1, device=device)[:3], contexts, steps)


def state_size(name: str, n: int) -> dict:
    spec = registry.get(name)
    numbers, cache = spec.state_size(B, H, H, n, D), kv_cache_size(B, H, H, n, D)
    print(f"  state of {name:<26} after N={n}: {numbers:>14,} numbers (softmax KV cache: {cache:,})")
    return {"state_numbers": numbers, "kv_cache_numbers": cache}


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="N=2048 instead of 8192, shorter decode contexts")
    parser.add_argument("--n", type=positive_int, default=None, help="sequence length (default 8192, quick 2048)")
    parser.add_argument("--contexts", type=ints, default=None,
                        help="comma list of decode contexts (default 1024,4096,16384,65536; quick 1024,8192)")
    parser.add_argument("--repeats", type=positive_int, default=5)


def run(args) -> int:
    n = args.n or (2048 if args.quick else 8192)
    contexts = args.contexts or ([1024, 8192] if args.quick else [1024, 4096, 16384, 65536])
    machine = machine_info(device=args.device)
    gemm = machine["gemm_gflops_fp32"]
    names = stateful_causal()
    items = ([{"section": "forms", "N": n}] + [{"section": "chunked", "mechanism": m, "N": n} for m in names]
             + [{"section": "decode", "contexts": contexts}]
             + [{"section": "state", "mechanism": m, "N": n} for m in registry.names()
                if registry.get(m).stateful_forms is not None])
    print(f"attnkit bench linear: B={B} H={H} D={D} fp32, {torch.get_num_threads()} threads, {args.device}, "
          f"fp32 GEMM {gemm:.1f} GFLOP/s (this run), load average {os.getloadavg()[0]:.1f}")

    def measure(item):
        with torch.no_grad():
            if item["section"] == "forms":
                return forms_and_scaling(n, args.repeats, gemm, args.device)
            if item["section"] == "chunked":
                return chunked(item["mechanism"], n, args.repeats, args.device)
            if item["section"] == "decode":
                return decode(contexts, 50, args.device)
            return state_size(item["mechanism"], n)

    config = {"N": n, "contexts": contexts, "repeats": args.repeats, "device": args.device}
    code, _ = run_items("linear", config, items, measure, args, machine=machine, describe=canonical)
    return code
