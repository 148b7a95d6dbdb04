"""``attnkit bench vision``: forward (and forward+backward) time of every vision
module on one feature map, as a ratio to two baselines timed in the same run: a
3x3 convolution C -> C (what a CNN block spends anyway) and a global multi-head
self-attention layer over all H*W tokens (what the ViT blocks avoid).

    attnkit bench vision [--channels 64] [--size 32] [--batch 4] [--repeats 5] [--threads 1] [--only A,B]
"""
from __future__ import annotations

import statistics

import torch
import torch.nn as nn

from ...api import attention
from ..options import names, positive_int, unknown
from ..runner import run_items
from ..timing import timings

THREADS = 1  # small maps gain little from more


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
    from ...nn import vision as V

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
        "ConditionalPositionEncoding": lambda: V.ConditionalPositionEncoding(C),
        "ChannelGroupAttention": lambda: V.ChannelGroupAttention(C, groups=heads),
        "SpatialWindowAttention": lambda: V.SpatialWindowAttention(C, heads, window=8),
        "DualAttentionBlock": lambda: V.DualAttentionBlock(C, heads, groups=heads, window=8),
        "HaloAttention": lambda: V.HaloAttention(C, heads, block=8, halo=3),
        "SuperTokenAttention": lambda: V.SuperTokenAttention(C, heads, stoken=4),
        "BiLevelRoutingAttention": lambda: V.BiLevelRoutingAttention(C, heads, n_win=4, top_k=4),
    }


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
    fwd_t = timings([fwd for fwd, _ in runs], repeats)
    step_t = timings([step for _, step in runs], repeats)
    med = statistics.median
    return {
        "forward_ms": 1e3 * med(fwd_t[0]),
        "fwd_bwd_ms": 1e3 * med(step_t[0]),
        "forward_ratios": [med(a / b for a, b in zip(fwd_t[0], fwd_t[i])) for i in range(1, len(runs))],
        "fwd_bwd_ratios": [med(a / b for a, b in zip(step_t[0], step_t[i])) for i in range(1, len(runs))],
        "baseline_forward_ms": [1e3 * med(t) for t in fwd_t[1:]],
    }


def add_arguments(parser) -> None:
    parser.add_argument("--channels", type=positive_int, default=64)
    parser.add_argument("--size", type=positive_int, default=32, help="height = width; a multiple of 8")
    parser.add_argument("--batch", type=positive_int, default=4)
    parser.add_argument("--heads", type=positive_int, default=4)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--only", type=names, default=None, help="comma list of module names to time (default: all)")


def run(args) -> int:
    if args.size % 8:
        raise ValueError(f"--size must be a multiple of 8 (windows and blocks of 8), got {args.size}")
    C, S = args.channels, args.size
    modules = configs(C, args.heads)
    for name in args.only or []:
        if name not in modules:
            raise ValueError(unknown(name, modules, "module"))
    torch.manual_seed(0)
    x = torch.randn(args.batch, C, S, S).to(args.device)
    baselines = [nn.Conv2d(C, C, 3, padding=1).to(args.device), GlobalAttention(C, args.heads).to(args.device)]
    print(f"input {[args.batch, C, S, S]}, fp32, {torch.get_num_threads()} threads, {args.device}")
    print(f"{'module':<27}{'params':>9}{'fwd ms':>9}{'fwd/conv3x3':>13}{'fwd/global':>12}{'fwd+bwd/conv3x3':>17}"
          f"{'conv3x3 ms':>12}{'global ms':>11}")

    def measure(item):
        torch.manual_seed(0)
        module = modules[item["module"]]().to(args.device)
        r = paired(module, baselines, x, args.repeats)
        row = {"params": sum(p.numel() for p in module.parameters()),
               "forward_ms": r["forward_ms"], "fwd_bwd_ms": r["fwd_bwd_ms"],
               "forward_vs_conv3x3": r["forward_ratios"][0], "forward_vs_global_attention": r["forward_ratios"][1],
               "fwd_bwd_vs_conv3x3": r["fwd_bwd_ratios"][0], "conv3x3_forward_ms": r["baseline_forward_ms"][0],
               "global_attention_forward_ms": r["baseline_forward_ms"][1]}
        print(f"{item['module']:<27}{row['params']:>9}{row['forward_ms']:>9.2f}{row['forward_vs_conv3x3']:>13.2f}"
              f"{row['forward_vs_global_attention']:>12.2f}{row['fwd_bwd_vs_conv3x3']:>17.2f}"
              f"{row['conv3x3_forward_ms']:>12.2f}{row['global_attention_forward_ms']:>11.2f}")
        return row

    config = {"input": [args.batch, C, S, S], "heads": args.heads, "repeats": args.repeats, "device": args.device}
    code, _ = run_items("vision", config, [{"module": m} for m in (args.only or modules)], measure, args,
                        describe=lambda it: it["module"])
    return code
