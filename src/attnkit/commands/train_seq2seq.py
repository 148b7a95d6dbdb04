"""``attnkit train seq2seq``: an RNN encoder-decoder with classic attention on a synthetic task.

    attnkit train seq2seq --task sort       # Pointer Network sorting 10 numbers, target 90% exact
    attnkit train seq2seq --task reverse    # additive (Bahdanau) attention reversing strings, target 95%

Training stops at the target validation accuracy or after ``--minutes``; the
exact-sequence accuracy printed is measured afterwards on 4,000 test examples.
"""
from __future__ import annotations

import json

TARGETS = {"sort": 0.90, "reverse": 0.95}
LENGTHS = {"sort": 10, "reverse": 15}
RATES = {"sort": 2e-3, "reverse": 4e-3}


def add_arguments(sub) -> None:
    from ..bench.options import non_negative_int, positive_float, positive_int

    p = sub.add_parser("seq2seq", help="RNN encoder-decoder with classic attention: sort (pointer network) or reverse")
    p.add_argument("--task", choices=tuple(TARGETS), default="sort")
    p.add_argument("--length", type=positive_int, default=None,
                   help="sort: numbers per example (default 10); reverse: longest string (default 15)")
    p.add_argument("--hidden", type=positive_int, default=128)
    p.add_argument("--batch", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=None, help="Adam's peak rate (default: 2e-3 sort, 4e-3 reverse)")
    p.add_argument("--minutes", type=positive_float, default=5.0)
    p.add_argument("--max-steps", type=non_negative_int, default=None)
    p.add_argument("--target", type=positive_float, default=None,
                   help="stop at this validation exact-sequence accuracy (default: 0.90 sort, 0.95 reverse)")
    p.add_argument("--eval-every", type=positive_int, default=100, help="steps between validation checks")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args) -> int:
    import torch

    from ..training.seq2seq import Seq2SeqConfig, train

    cfg = Seq2SeqConfig(task=args.task, length=args.length or LENGTHS[args.task], hidden=args.hidden,
                        batch=args.batch, lr=args.lr or RATES[args.task], minutes=args.minutes, max_steps=args.max_steps,
                        target=TARGETS[args.task] if args.target is None else args.target,
                        eval_every=args.eval_every, seed=args.seed)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    quiet = args.json
    report = None if quiet else (lambda step, loss, acc, s: print(
        f"step {step}: loss {loss:.4f}, validation exact-sequence accuracy {acc:.3f} ({s:.0f} s)", flush=True))
    result = train(cfg, on_eval=report)
    result["threads"] = torch.get_num_threads()
    if quiet:
        print(json.dumps(result))
    else:
        print(f"{cfg.task} (length {cfg.length}): test exact-sequence accuracy {result['test_exact']:.3f} "
              f"(per token {result['test_token']:.3f}) on {result['test_examples']} examples after "
              f"{result['steps']} steps, {result['seconds'] / 60:.2f} min on {result['threads']} threads; "
              f"target {cfg.target:.2f} {'reached' if result['reached_target'] else 'NOT reached'} on validation")
    return 0
