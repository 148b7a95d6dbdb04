"""``attnkit bench block-transformer``: Block Transformer's generation throughput against a plain LM of equal parameters.

The paper's inference claim ("Block Transformer: Global-to-Local Language Modeling for Fast
Inference"): its block decoder runs once per block over a cache of one entry per block, and
its token decoder's cache never outgrows one block, so decoding reads far less KV cache than a
plain decoder of the same size. Here an untrained
:class:`attnkit.models.block_transformer.BlockTransformerLM` (``--block-len``, 2 block-decoder
and 2 token-decoder layers) and an untrained :class:`attnkit.models.DecoderLM` of the same width
whose layer count gives the closest parameter count both continue a ``--prompt``-token prompt
by ``--new`` tokens with their caches (greedy; throughput does not depend on the weights).
Medians of ``--repeats`` runs timed in turns in one process: the whole generation, the prompt
alone (``generate(prompt, 1)``) and their difference, the decoding; tokens/s and the ratios
to the plain LM.
"""
from __future__ import annotations

import torch

from ...models import DecoderLM, ModelConfig
from ...models.block_transformer import BlockTransformerLM
from ..options import positive_int
from ..runner import run_items
from ..store import canonical
from ..timing import median_times

NAME = "block-transformer"
THREADS = 1  # the machine is usually shared


def add_arguments(p) -> None:
    p.add_argument("--prompt", type=positive_int, default=2048, help="prompt tokens (default 2048)")
    p.add_argument("--new", type=positive_int, default=128, help="generated tokens (default 128)")
    p.add_argument("--batch", type=positive_int, default=4, help="sequences per batch (default 4)")
    p.add_argument("--dim", type=positive_int, default=128, help="model width (default 128)")
    p.add_argument("--block-len", type=positive_int, default=4, help="tokens per block (default 4)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed runs per model (default 3)")


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def models(dim: int, block_len: int):
    """The Block Transformer and the plain LM (1..12 layers) whose parameter count is closest to it."""
    torch.manual_seed(0)
    block = BlockTransformerLM(256, block_len=block_len, dim=dim, heads=4).eval()
    plain = min((DecoderLM(ModelConfig(vocab_size=256, dim=dim, heads=4, schedule="F" * n)).eval()
                 for n in range(1, 13)), key=lambda m: abs(count(m) - count(block)))
    return block, plain


def run(args) -> int:
    def measure(_item):
        block, plain = models(args.dim, args.block_len)
        prompt = torch.randint(0, 256, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            t_block, t_plain, p_block, p_plain = median_times(
                [lambda: block.generate(prompt, args.new), lambda: plain.generate(prompt, args.new),
                 lambda: block.generate(prompt, 1), lambda: plain.generate(prompt, 1)], args.repeats)
        new = args.batch * (args.new - 1)
        row = {"block_params": count(block), "plain_params": count(plain), "plain_layers": len(plain.blocks),
               "block_seconds": t_block, "plain_seconds": t_plain, "block_prefill_seconds": p_block,
               "plain_prefill_seconds": p_plain,
               "block_decode_tokens_per_s": new / max(t_block - p_block, 1e-9),
               "plain_decode_tokens_per_s": new / max(t_plain - p_plain, 1e-9)}
        row["generate_speedup"] = t_plain / t_block
        row["decode_speedup"] = row["block_decode_tokens_per_s"] / row["plain_decode_tokens_per_s"]
        print(f"Block Transformer ({row['block_params']:,} parameters, block_len {args.block_len}) vs a plain LM "
              f"({row['plain_params']:,}, {row['plain_layers']} layers), batch {args.batch}, prompt {args.prompt}, "
              f"{args.new} new tokens, threads {torch.get_num_threads()}:\n"
              f"  whole generation {t_block:.2f} s vs {t_plain:.2f} s: {row['generate_speedup']:.2f}x\n"
              f"  decoding {row['block_decode_tokens_per_s']:.0f} vs {row['plain_decode_tokens_per_s']:.0f} tokens/s: "
              f"{row['decode_speedup']:.2f}x; prefill {p_block:.2f} s vs {p_plain:.2f} s")
        return row

    config = {k: getattr(args, k) for k in ("prompt", "new", "batch", "dim", "block_len", "repeats")}
    code, _ = run_items("block-transformer", config, [{"prompt": args.prompt, "new": args.new}], measure, args,
                        describe=canonical)
    return code
