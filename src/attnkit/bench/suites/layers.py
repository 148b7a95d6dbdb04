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

import statistics
import time

import torch

from ...nn import Attention, MixtureOfAttentionHeads, MultiHeadLatentAttention
from ..options import ints, positive_int
from ..runner import run_items
from ..store import canonical
from ..timing import median_times

THREADS = 1  # the machine is usually shared


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


def add_arguments(p) -> None:
    p.add_argument("--dim", type=positive_int, default=512)
    p.add_argument("--heads", type=positive_int, default=8)
    p.add_argument("--context", type=positive_int, default=2048)
    p.add_argument("--steps", type=positive_int, default=32)
    p.add_argument("--moa-n", type=ints, default=[512, 2048], help="comma list of MoA sequence lengths")


def layers(dim: int, heads: int) -> dict:
    hd = dim // heads
    out = {
        f"MHA (kv_heads={heads})": (lambda: Attention(dim, heads, rope=True), {}),
        f"GQA (kv_heads={max(1, heads // 4)})": (lambda: Attention(dim, heads, kv_heads=max(1, heads // 4),
                                                                   rope=True), {}),
        "MQA (kv_heads=1)": (lambda: Attention(dim, heads, kv_heads=1, rope=True), {}),
    }
    mla = lambda **kw: MultiHeadLatentAttention(dim, heads, head_dim=hd, kv_latent=4 * hd,  # noqa: E731
                                                rope_dim=hd // 2, q_latent=dim // 2, **kw)
    out[f"MLA absorbed (latent {4 * hd} + rope {hd // 2})"] = (mla, {"form": "absorbed"})
    out["MLA naive (same weights)"] = (mla, {"form": "naive"})
    out["MLA absorbed, chunked softmax form"] = (lambda: mla(attention_form="chunked"), {"form": "absorbed"})
    return out


def run(args) -> int:
    print(f"fp32, threads={torch.get_num_threads()}, {args.device}; dim={args.dim}, heads={args.heads}, "
          f"context={args.context}, {args.steps} decode steps (median)")
    structures = layers(args.dim, args.heads)
    torch.manual_seed(0)
    x = torch.randn(1, args.context + args.steps, args.dim).to(args.device)
    base = {}

    def measure(item):
        if "layer" in item:
            make, kw = structures[item["layer"]]
            torch.manual_seed(0)
            seconds, per_token = _decode(make().to(args.device), x, args.context, args.steps, **kw)
            if item["layer"] == next(iter(structures)):  # MHA, the baseline
                base["seconds"] = seconds
            row = {"seconds_per_token": seconds, "cache_numbers_per_token": per_token,
                   "time_vs_mha": seconds / base["seconds"] if base else None}  # None: resumed without MHA
            print(f"{item['layer']:<36} {per_token:>20.0f} {row['time_vs_mha'] or float('nan'):>18.2f}")
            return row
        n = item["moa_n"]
        moa = MixtureOfAttentionHeads(args.dim, experts=16, top_k=2, head_dim=args.dim // args.heads).to(args.device)
        xs = torch.randn(1, n, args.dim).to(args.device)
        with torch.no_grad():
            sparse, dense = median_times([lambda: moa(xs, causal=True), lambda: moa(xs, causal=True, form="dense")], 3)
        print(f"MoA 16 experts, top-2, N={n}: sparse / dense forward time = {sparse / dense:.2f}")
        return {"sparse_s": sparse, "dense_s": dense, "sparse_over_dense": sparse / dense}

    print(f"{'layer':<36} {'cache numbers/token':>20} {'decode time / MHA':>18}")
    items = [{"layer": name} for name in structures] + [{"moa_n": n} for n in args.moa_n]
    config = {"dim": args.dim, "heads": args.heads, "context": args.context, "steps": args.steps,
              "moa_n": args.moa_n, "device": args.device}
    code, _ = run_items("layers", config, items, measure, args, describe=canonical)
    return code
