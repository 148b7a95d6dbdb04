"""``attnkit bench layers``: decoding cost of the head structures, and MoA's sparse form.

1. Decoding: prefill a context of ``--context`` tokens, then decode ``--steps``
   tokens one at a time with the layer's state. Reports the cache size per
   token and the decode time per token as a ratio to multi-head attention
   measured in the same run, for MHA, GQA, MQA ("Fast Transformer Decoding:
   One Write-Head is All You Need") and MLA (DeepSeek-V2; absorbed and naive forms).
2. MoA ("Mixture of Attention Heads"): forward time of the sparse form (only the
   top-k chosen heads attend) against the dense definition (all experts attend).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ..machine import gemm_gflops
from ..nn import Attention, MixtureOfAttentionHeads, MultiHeadLatentAttention


def _median_time(fn, repeats: int) -> float:
    fn()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def _decode(layer, x, context: int, steps: int, **kw):
    """Seconds per decoded token (median over steps) and cache numbers per token."""
    with torch.no_grad():
        _, state = layer(x[:, :context], causal=True, return_state=True, **kw)
        times = []
        for t in range(context, context + steps):
            start = time.perf_counter()
            _, state = layer(x[:, t : t + 1], causal=True, state=state, return_state=True, **kw)
            times.append(time.perf_counter() - start)
    return statistics.median(times), state.numel() / (x.shape[0] * state.length)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="attnkit bench layers", description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"fp32, threads={args.threads}, GEMM {gemm_gflops():.1f} GFLOP/s (same run); dim={args.dim}, "
          f"heads={args.heads}, context={args.context}, {args.steps} decode steps (median)")
    x = torch.randn(1, args.context + args.steps, args.dim)
    hd = args.dim // args.heads
    layers = {
        f"MHA (kv_heads={args.heads})": (Attention(args.dim, args.heads, rope=True), {}),
        f"GQA (kv_heads={max(1, args.heads // 4)})": (Attention(args.dim, args.heads, kv_heads=max(1, args.heads // 4),
                                                                rope=True), {}),
        "MQA (kv_heads=1)": (Attention(args.dim, args.heads, kv_heads=1, rope=True), {}),
    }
    mla = MultiHeadLatentAttention(args.dim, args.heads, head_dim=hd, kv_latent=4 * hd, rope_dim=hd // 2,
                                   q_latent=args.dim // 2)
    layers[f"MLA absorbed (latent {4 * hd} + rope {hd // 2})"] = (mla, {"form": "absorbed"})
    layers["MLA naive (same weights)"] = (mla, {"form": "naive"})
    chunked = MultiHeadLatentAttention(args.dim, args.heads, head_dim=hd, kv_latent=4 * hd, rope_dim=hd // 2,
                                       q_latent=args.dim // 2, attention_form="chunked")
    layers["MLA absorbed, chunked softmax form"] = (chunked, {"form": "absorbed"})
    print(f"{'layer':<36} {'cache numbers/token':>20} {'decode time / MHA':>18}")
    base = None
    for name, (layer, kw) in layers.items():
        seconds, per_token = _decode(layer, x, args.context, args.steps, **kw)
        base = base or seconds
        print(f"{name:<36} {per_token:>20.0f} {seconds / base:>18.2f}")
    print(f"(MHA decode: {base * 1e3:.2f} ms/token)")
    for n in (512, 2048):
        moa = MixtureOfAttentionHeads(args.dim, experts=16, top_k=2, head_dim=hd)
        xs = torch.randn(1, n, args.dim)
        with torch.no_grad():
            sparse = _median_time(lambda: moa(xs, causal=True), 3)
            dense = _median_time(lambda: moa(xs, causal=True, form="dense"), 3)
        print(f"MoA 16 experts, top-2, N={n}: sparse / dense forward time = {sparse / dense:.2f}")
    return 0
