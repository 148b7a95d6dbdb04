"""FlexAttention user functions for ``attnkit bench kernels --flex-cases``: the same callables run by
compiled FlexAttention and by :func:`attnkit.flex_attention`.

Each case is a ``mask_mod`` and a ``score_mod`` written as attention-gym writes
them. The worker builds one ``BlockMask`` (``create_block_mask``), then times in
turns compiled FlexAttention's forward and attnkit's (``flex_ratio`` > 1:
attnkit is faster), then attnkit's forward+backward (compiled FlexAttention has
no backward on CPU, so that row has no baseline).
"""
from __future__ import annotations

import json
import sys

import torch

from .memory import peak_mb
from .timing import median_seconds, median_times


def _sliding_window_softcap(B, H, n):
    def sliding_window(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < 512)

    def tanh_softcap(score, b, h, q_idx, kv_idx):
        return 30.0 * torch.tanh(score / 30.0)

    return sliding_window, tanh_softcap


def _causal_alibi(B, H, n):
    slopes = torch.exp2(-((torch.arange(H) + 1) * 8.0 / H))

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    def alibi(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx)

    return causal, alibi


def _document_relative_bias(B, H, n):
    offsets = torch.linspace(0, n, 17).long()
    document_id = torch.repeat_interleave(torch.arange(16), offsets.diff())
    bias = torch.randn(H, 2 * n - 1, generator=torch.Generator().manual_seed(0)) * 0.1

    def document_causal(b, h, q_idx, kv_idx):
        return (document_id[q_idx] == document_id[kv_idx]) & (q_idx >= kv_idx)

    def relative_bias(score, b, h, q_idx, kv_idx):
        return score + bias[h, q_idx - kv_idx + n - 1]

    return document_causal, relative_bias


CASES = {"sliding_window+softcap": _sliding_window_softcap, "causal+alibi": _causal_alibi,
         "document+relative_bias": _document_relative_bias}


def flex_case_rows(args, name: str, n: int) -> int:
    """Worker of one (case, N): ``ROW`` lines (or ``MEM`` lines with ``args.memory``) on stdout."""
    import attnkit
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from ..flex.block_mask import layout_from_block_mask
    from .machine import gemm_gflops

    B, H, D = args.batch, args.heads, args.head_dim
    mask_mod, score_mod = CASES[name](B, H, n)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, n, D, generator=g) for _ in range(3))
    block_mask = create_block_mask(mask_mod, None, None, n, n, device="cpu")

    def ours(backward):
        for t in (q, k, v):
            t.grad = None
            t.requires_grad_(backward)
        out = attnkit.flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)
        if backward:
            out.backward(torch.ones_like(out))
        return out

    if args.memory:
        for direction in args.directions:
            with torch.set_grad_enabled(direction == "fwdbwd"):
                print("MEM " + json.dumps({"direction": direction,
                                           "peak_mb": peak_mb(lambda: ours(direction == "fwdbwd"))[1]}), flush=True)
        return 0
    layout = layout_from_block_mask(block_mask, batch=B, heads=H, q_len=n, kv_len=n)
    flops, gemm = layout.flops(D), gemm_gflops()
    times = {}
    if "fwd" in args.directions:
        compiled = torch.compile(flex_attention)
        with torch.no_grad():
            compiled(q, k, v, score_mod=score_mod, block_mask=block_mask)  # compile outside the timing
            print(f"flex:{name} N={n}: compiled, timing in turns", file=sys.stderr, flush=True)
            flex_t, times["fwd"] = median_times([lambda: compiled(q, k, v, score_mod=score_mod, block_mask=block_mask),
                                                 lambda: ours(False)], args.repeats, budget=args.budget)
    if "fwdbwd" in args.directions:
        times["fwdbwd"] = median_seconds(lambda: ours(True), args.repeats, budget=args.budget)
    for direction, t in times.items():
        gf = flops * (3.5 if direction == "fwdbwd" else 1.0) / t / 1e9
        row = dict(suite="kernels", pattern=f"flex:{name}", n=n, direction=direction, seconds=t,
                   qkv_mb=3 * q.numel() * 4 / 2**20, gflops=gf, gemm_gflops=gemm, gemm_ratio=gf / gemm,
                   flex_ratio=flex_t / t if direction == "fwd" else None, flex_seconds=flex_t if direction == "fwd"
                   else None, density=layout.density, batch=B, heads=H, head_dim=D, threads=args.threads)
        print("ROW " + json.dumps(row), flush=True)
    return 0
