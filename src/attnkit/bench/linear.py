"""``attnkit bench linear``: the recurrent mechanisms' forms, scaling, decoding and state size.

At B=1, H=8, D=64, fp32 (issue 4's targets), every figure a ratio against a
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

import argparse
import os

import torch

from .. import registry
from ..machine import gemm_gflops
from ..registry import kv_cache_size
from ._decode import decode_flatness
from ._timing import interleaved_medians, median_seconds

B, H, D = 1, 8, 64
DELTA_RULES = ("deltanet", "gated_deltanet", "kda")



def _inputs(spec, n: int, head_dim: int = D, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, head_dim, generator=g) for _ in range(3))
    extra = spec.tensor_inputs(q, k, v, g) if spec.tensor_inputs is not None else {}
    return q, k, v, extra


def _form(spec, name, q, k, v, extra, **kw):
    params = {**spec.params, **extra, **kw}
    return spec.stateful_forms[name](q, k, v, causal=True, scale=q.shape[-1] ** -0.5, **params)


def _per_head(extra, spec, h):
    return {n: (t[:, h : h + 1] if n in spec.tensor_inputs_per_token else t) for n, t in extra.items()}


def forms_and_scaling(n: int, repeats: int, gemm: float) -> None:
    spec = registry.get("linear")
    q, k, v, extra = _inputs(spec, n)

    def parallel():
        for h in range(H):
            _form(spec, "parallel", q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1], _per_head(extra, spec, h))

    # The chunked form first (the parallel form's (N, N) buffers leave glibc's heap in another state),
    # N and 4N in turns so that both see the same machine.
    q4, k4, v4, extra4 = _inputs(spec, 4 * n)
    t_chunk, t_chunk4 = interleaved_medians(
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


def mechanisms_chunked(n: int, repeats: int) -> None:
    """Chunked forward time of every causal recurrent mechanism, and delta rules vs their recurrence."""
    print(f"\nchunked forward at N={n} (Based at head_dim 16, the paper's feature dim):")
    for name in registry.names():
        spec = registry.get(name)
        if spec.stateful_forms is None or "causal-self" not in spec.patterns:
            continue
        q, k, v, extra = _inputs(spec, n, 16 if name == "based" else D)
        t = median_seconds(lambda: _form(spec, "chunked", q, k, v, extra), repeats)
        line = f"  {name:<26} {t * 1e3:9.1f} ms"
        if name in DELTA_RULES:
            t_rec = median_seconds(lambda: _form(spec, "recurrent", q, k, v, extra), 3)
            line += f"   recurrent {t_rec * 1e3:.1f} ms -> chunked {t_rec / t:.1f}x faster (target >= 20x)"
        print(line)


def decode(contexts: list[int], steps: int) -> None:
    spec = registry.get("linear")
    print("\ndecode step (linear, recurrent form) after a chunked prefill:")

    def run(form, q, k, v, **kw):
        return _form(spec, form, q, k, v, {}, **kw)  # elu+1 linear attention has no tensor inputs

    decode_flatness(run, lambda n: _inputs(spec, n, seed=1)[:3], contexts, steps)


def state_sizes(n: int) -> None:
    print(f"\nstate after N={n} tokens (B={B}, H={H}, D={D}), numbers:")
    print(f"  {'softmax KV cache':<26} {kv_cache_size(B, H, H, n, D):>14,}")
    for name in registry.names():
        spec = registry.get(name)
        if spec.stateful_forms is not None:
            print(f"  {name:<26} {spec.state_size(B, H, H, n, D):>14,}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attnkit bench linear", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=2048 instead of 8192, shorter decode contexts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = 2048 if args.quick else 8192
    contexts = [1024, 8192] if args.quick else [1024, 4096, 16384, 65536]
    gemm = gemm_gflops()
    print(f"attnkit bench linear: B={B} H={H} D={D} fp32, {args.threads} threads, "
          f"fp32 GEMM {gemm:.1f} GFLOP/s (this run), load average {os.getloadavg()[0]:.1f}")
    with torch.no_grad():
        forms_and_scaling(n, args.repeats, gemm)
        mechanisms_chunked(n, args.repeats)
        decode(contexts, 50)
    state_sizes(n)
    return 0
