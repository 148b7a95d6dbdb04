"""``attnkit train seer-r``: SeerAttention-R's decode gates distilled into a trained softmax LM (base frozen).

    attnkit train seer-r --from ckpt.pt --block-size 16 --top-k 2 --minutes 5 --out gated.pt

Prints held-out perplexity dense, with untrained gates and after training (every query reads
its own block and the ``--top-k - 1`` past blocks its gate ranks first: one call equals
decoding token by token), and the attention mass the chosen blocks hold. ``--out`` writes the
gated LM (base weights and gates) as an LM checkpoint; ``attnkit bench sparse --lm-recall
--seer-checkpoint`` reads its gates.
"""
from __future__ import annotations

import json


def add_arguments(sub) -> None:
    from ..bench.options import positive_float, positive_int

    s = sub.add_parser("seer-r", help="SeerAttention-R: distil decode block gates into a trained softmax LM "
                                      "(base frozen)")
    s.add_argument("--from", dest="base", required=True, help="checkpoint of a softmax LM (attnkit train lm --out)")
    s.add_argument("--block-size", type=positive_int, default=16, help="keys per gated block")
    s.add_argument("--top-k", type=positive_int, default=4, help="blocks each query reads (its own included)")
    s.add_argument("--pool", choices=("max", "sum"), default="max",
                   help="distillation target per block: its largest attention weight (the authors' code) or its "
                        "attention mass")
    s.add_argument("--context", type=positive_int, default=None, help="default: the checkpoint's training context")
    s.add_argument("--batch", type=positive_int, default=16)
    s.add_argument("--lr", type=positive_float, default=1e-2)
    s.add_argument("--minutes", type=positive_float, default=5.0)
    s.add_argument("--max-steps", type=positive_int, default=None)
    s.add_argument("--eval-tokens", type=positive_int, default=65536)
    s.add_argument("--threads", type=positive_int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="write the gated LM checkpoint here")
    s.add_argument("--json", action="store_true", help="print the final metrics as JSON")


def run(args) -> int:
    import torch

    from ..data import shakespeare
    from ..training.lm import TrainConfig, load_checkpoint, save_checkpoint
    from ..training.metrics import eval_windows, model_perplexity
    from ..training.seer import seer_model
    from ..training.seer_decode import decode_gate_quality, distill_decode_gates

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    base, codec, ckpt = load_checkpoint(args.base)
    context = args.context or ckpt.get("train_config", {}).get("context", 64)
    model = seer_model(base, block_size=args.block_size, top_k=args.top_k, mechanism="seer_attention_r")
    train_text, held_text = shakespeare.load_split()
    windows = eval_windows(codec.encode(held_text), context, args.eval_tokens)
    metrics = {"context": context, "block_size": args.block_size, "top_k": args.top_k, "pool": args.pool,
               "dense_perplexity": round(model_perplexity(base, windows), 3)}
    before = decode_gate_quality(model, windows)
    metrics.update({"untrained_perplexity": round(model_perplexity(model, windows), 3),
                    "untrained_kept_mass": before["kept_mass"]})
    result = distill_decode_gates(model, codec.encode(train_text), context=context, batch=args.batch, lr=args.lr,
                                  minutes=args.minutes, max_steps=args.max_steps, pool=args.pool, seed=args.seed)
    after = decode_gate_quality(model, windows)
    metrics.update({"perplexity": round(model_perplexity(model, windows), 3), "kept_mass": after["kept_mass"],
                    "density": after["density"], "steps": result["steps"], "seconds": result["seconds"],
                    "first_loss": round(result["losses"][0], 4) if result["losses"] else None,
                    "final_loss": round(sum(result["losses"][-10:]) / max(1, len(result["losses"][-10:])), 4)})
    if args.out:
        save_checkpoint(args.out, model, codec, TrainConfig(context=context), metrics=metrics)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"SeerAttention-R, blocks of {args.block_size}, {args.top_k} blocks per query (density "
              f"{metrics['density']:.2f} of the causal pairs), context {context}: {result['steps']} distillation "
              f"steps in {result['seconds']} s, loss {metrics['first_loss']} -> {metrics['final_loss']}\n"
              f"held-out perplexity: dense {metrics['dense_perplexity']}, gated before training "
              f"{metrics['untrained_perplexity']} (keeps {metrics['untrained_kept_mass']:.1%} of the attention mass), "
              f"after {metrics['perplexity']} (keeps {metrics['kept_mass']:.1%})")
    return 0
