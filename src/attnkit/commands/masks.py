"""``attnkit masks``: list the named mask patterns, or draw one with its block layout.

    attnkit masks list
    attnkit masks show sliding_window_causal --n 64 --block 8 --out mask.png

The picture has two panels: the element mask (allowed pairs) and the tiles the
block-sparse kernel visits (full / partial / empty), with density, tile counts
and the forward FLOPs (LongCA convention, for B=1, H=1, D=64) in the title.
"""
from __future__ import annotations

NAME = "masks"
HELP = "list mask patterns, or draw one and its block layout (show NAME --n 64 --out mask.png)"


def add_arguments(parser) -> None:
    from ..bench.options import positive_int

    parser.add_argument("action", choices=["list", "show"])
    parser.add_argument("pattern", nargs="?", default=None, help="a pattern name from `attnkit masks list`")
    parser.add_argument("--n", type=positive_int, default=64, help="sequence length")
    parser.add_argument("--block", type=positive_int, default=8, help="tile size of the layout")
    parser.add_argument("--head", type=int, default=0, help="head to draw for per-head patterns")
    parser.add_argument("--heads", type=positive_int, default=4, help="heads of the example (per-head patterns)")
    parser.add_argument("--out", default="mask.png", help="PNG file to write")


def estimate_bytes(n: int, heads: int, block: int) -> float:
    """The picture's element mask (a boolean and two float copies of N x N per head drawn, all heads'
    masks while the layout is built) and the layout's tiles."""
    return heads * n * n + 9 * n * n + 4 * heads * (-(-n // block)) ** 2


def run(args) -> int:
    from ..bench.memory import require
    from ..bench.options import unknown
    from ..bench.patterns import PATTERNS

    if args.action == "list":
        for name, p in PATTERNS.items():
            print(f"{name:24s} mechanism={p.mechanism:22s} causal={p.causal}")
        return 0
    if args.pattern is None:
        raise ValueError("masks show needs a pattern name (attnkit masks list)")
    if args.pattern not in PATTERNS:
        raise ValueError(unknown(args.pattern, PATTERNS, "pattern"))
    require(estimate_bytes(args.n, args.heads, args.block), f"masks show at N={args.n}")
    layout = _layout(PATTERNS[args.pattern], args)
    _draw(layout, args)
    c = layout.counts()
    print(f"{args.pattern}: N={args.n} block={args.block} density={layout.density:.4f} "
          f"tiles full/partial/empty={c['full']}/{c['partial']}/{c['empty']} -> {args.out}")
    return 0


def _layout(pattern, args):
    import torch

    import attnkit
    from ..builders.mask_pipeline import mask_of
    from ..masks import build_layout, causal_mask, full_mask

    q = torch.zeros(1, args.heads, args.n, 8)
    if pattern.mechanism == "softmax":
        mask = causal_mask() if pattern.causal else full_mask()
    else:
        params = {n: _scaled(v, args.n) for n, v in pattern.params(args.n).items()}
        mask = mask_of(attnkit.spec(pattern.mechanism), q, q, causal=pattern.causal, **params,
                       **pattern.inputs(1, args.heads, args.n))
    return build_layout(mask, batch=1, heads=args.heads, q_len=args.n, kv_len=args.n, block_q=args.block,
                        block_k=args.block)


def _scaled(value, n):
    """Benchmark sizes (windows of 512 at N=16384) shrunk so a 64-token picture still shows the shape."""
    if isinstance(value, int) and not isinstance(value, bool) and value > max(2, n // 4):
        return max(2, value * n // 16384, n // 8)
    return value


def _draw(layout, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    h = min(args.head, layout.kind.shape[1] - 1)
    element = layout.element_mask()[0, h].float().numpy()
    kind = layout.kind[0, h].float().numpy()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    axes[0].imshow(element, cmap="Blues", interpolation="nearest")
    axes[0].set_title(f"element mask (density {layout.density:.3f})")
    axes[1].imshow(kind, cmap=ListedColormap(["white", "orange", "tab:blue"]), vmin=0, vmax=2, interpolation="nearest")
    c = layout.counts()
    axes[1].set_title(f"tiles {args.block}x{args.block}: full {c['full']}, partial {c['partial']}, empty {c['empty']}")
    for ax in axes:
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    fig.suptitle(f"{args.pattern}  N={args.n}  forward FLOPs (B=H=1, D=64): {layout.flops(64) / args.heads:.3g}")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    plt.close(fig)
