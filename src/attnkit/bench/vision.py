"""``attnkit bench vision``: forward (and forward+backward) time of every vision
module on one feature map, as a ratio to two baselines timed in the same run: a
3x3 convolution C -> C (what a CNN block spends anyway) and a global multi-head
self-attention layer over all H*W tokens (what the ViT blocks avoid).

    attnkit bench vision [--channels 64] [--size 32] [--batch 4] [--repeats 5] [--threads 1] [--only NAME ...] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn

from ..api import attention


class GlobalAttention(nn.Module):
    """Baseline: one pre-norm MHSA layer over all H*W tokens (attnkit softmax)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.norm, self.qkv, self.proj = heads, nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)
        q, k, v = (p.reshape(B, H * W, self.heads, -1).transpose(1, 2) for p in self.qkv(self.norm(t)).chunk(3, -1))
        o = attention(q, k, v, "softmax").transpose(1, 2).reshape(B, H * W, C)
        return (t + self.proj(o)).transpose(1, 2).reshape(B, C, H, W)


def configs(C: int, heads: int) -> dict:
    from ..nn import vision as V

    return {
        "SqueezeExcitation": lambda: V.SqueezeExcitation(C),
        "CBAM": lambda: V.CBAM(C),
        "ECA": lambda: V.ECA(C),
        "TripletAttention": lambda: V.TripletAttention(C),
        "ULSAM": lambda: V.ULSAM(C, groups=4),
        "EfficientLocalAttention": lambda: V.EfficientLocalAttention(C),
        "CoordinateAttention": lambda: V.CoordinateAttention(C),
        "PolarizedSelfAttention": lambda: V.PolarizedSelfAttention(C),
        "SplitAttention": lambda: V.SplitAttention(C, C, radix=2),
        "ResidualAttention": lambda: V.ResidualAttention(C, depth=2),
        "LargeKernelAttention": lambda: V.LargeKernelAttention(C),
        "NonLocalBlock": lambda: V.NonLocalBlock(C),
        "SwinBlock": lambda: V.SwinBlock(C, heads, window=8, shift=4),
        "LocallyGroupedAttention": lambda: V.LocallyGroupedAttention(C, heads, window=8),
        "GlobalSubsampledAttention": lambda: V.GlobalSubsampledAttention(C, heads, sr_ratio=4),
        "TwinsSVTBlock": lambda: V.TwinsSVTBlock(C, heads, window=8, sr_ratio=4),
        "ChannelGroupAttention": lambda: V.ChannelGroupAttention(C, groups=heads),
        "SpatialWindowAttention": lambda: V.SpatialWindowAttention(C, heads, window=8),
        "DualAttentionBlock": lambda: V.DualAttentionBlock(C, heads, groups=heads, window=8),
        "HaloAttention": lambda: V.HaloAttention(C, heads, block=8, halo=3),
        "SuperTokenAttention": lambda: V.SuperTokenAttention(C, heads, stoken=4),
    }


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def steps(module: nn.Module, x: torch.Tensor):
    """(forward without grad, forward + backward) as callables."""
    def forward():
        with torch.no_grad():
            module(x)

    def train_step():
        module.zero_grad(set_to_none=True)
        module(x).sum().backward()

    return forward, train_step


def paired(module: nn.Module, baselines: list[nn.Module], x: torch.Tensor, repeats: int) -> dict:
    """Time the module and each baseline back to back, ``repeats`` rounds; medians of the
    per-round ratios, which ride out the load drift of a shared machine better than
    ratios of separately taken medians."""
    runs = [steps(m, x) for m in [module, *baselines]]
    for fwd, step in runs:
        fwd(), step()
    fwd_t, step_t = [[] for _ in runs], [[] for _ in runs]
    for _ in range(repeats):
        for i, (fwd, step) in enumerate(runs):
            fwd_t[i].append(seconds(fwd))
            step_t[i].append(seconds(step))
    med = statistics.median
    return {
        "forward_ms": 1e3 * med(fwd_t[0]),
        "fwd_bwd_ms": 1e3 * med(step_t[0]),
        "forward_ratios": [med(a / b for a, b in zip(fwd_t[0], fwd_t[i])) for i in range(1, len(runs))],
        "fwd_bwd_ratios": [med(a / b for a, b in zip(step_t[0], step_t[i])) for i in range(1, len(runs))],
        "baseline_forward_ms": [1e3 * med(t) for t in fwd_t[1:]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attnkit bench vision", description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=32, help="height = width; a multiple of 8")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: small maps gain little from more)")
    parser.add_argument("--only", nargs="*", default=None, help="module names to time (default: all)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.size % 8:
        parser.error(f"--size must be a multiple of 8 (windows and blocks of 8), got {args.size}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from ..machine import gemm_gflops

    C, S = args.channels, args.size
    x = torch.randn(args.batch, C, S, S)
    baselines = [nn.Conv2d(C, C, 3, padding=1), GlobalAttention(C, args.heads)]
    rows = []
    for name, make in configs(C, args.heads).items():
        if args.only and name not in args.only:
            continue
        module = make()
        r = paired(module, baselines, x, args.repeats)
        rows.append({
            "module": name, "params": sum(p.numel() for p in module.parameters()),
            "forward_ms": r["forward_ms"], "fwd_bwd_ms": r["fwd_bwd_ms"],
            "forward_vs_conv3x3": r["forward_ratios"][0], "forward_vs_global_attention": r["forward_ratios"][1],
            "fwd_bwd_vs_conv3x3": r["fwd_bwd_ratios"][0],
            "conv3x3_forward_ms": r["baseline_forward_ms"][0], "global_attention_forward_ms": r["baseline_forward_ms"][1],
        })
    head = {
        "input": [args.batch, C, S, S], "threads": args.threads, "dtype": "float32",
        "gemm_gflops": round(gemm_gflops(), 1),
    }
    if args.json:
        print(json.dumps({"setup": head, "rows": rows}, indent=2))
        return 0
    print("  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in head.items()))
    print(f"{'module':<27}{'params':>9}{'fwd ms':>9}{'fwd/conv3x3':>13}{'fwd/global':>12}{'fwd+bwd/conv3x3':>17}"
          f"{'conv3x3 ms':>12}{'global ms':>11}")
    for r in rows:
        print(f"{r['module']:<27}{r['params']:>9}{r['forward_ms']:>9.2f}{r['forward_vs_conv3x3']:>13.2f}"
              f"{r['forward_vs_global_attention']:>12.2f}{r['fwd_bwd_vs_conv3x3']:>17.2f}"
              f"{r['conv3x3_forward_ms']:>12.2f}{r['global_attention_forward_ms']:>11.2f}")
    return 0
